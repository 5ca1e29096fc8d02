//! Builds the Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kubectl) from their Go modules at pinned versions, cached by version.
