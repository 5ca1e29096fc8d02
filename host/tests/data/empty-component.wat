;; A component that exports nothing: it does not implement pgwarden:policy.
(component)
