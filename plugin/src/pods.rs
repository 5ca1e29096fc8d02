//! `psql` and `logs`: which instance pod and container, then `kubectl exec` / `kubectl logs`
//! (they already speak the API server's streaming protocols and the terminal's).

use std::io::IsTerminal;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use pgwarden_crds::settings::pod::{CONTAINER, LABEL_CLUSTER, LABEL_ROLE};

use crate::{Target, get_cluster};

#[derive(clap::Args, Debug)]
pub struct PsqlArgs {
    /// The Cluster whose primary to connect to.
    cluster: String,
    /// Print the kubectl command instead of running it.
    #[arg(long)]
    print_command: bool,
    /// Passed on to psql (after `--`), e.g. `-- -c 'SELECT 1'`.
    #[arg(last = true)]
    psql_args: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The Cluster whose instance pods' logs to show.
    cluster: String,
    /// Only this instance: its number (`2`) or pod name (`pg-2`). Default: every instance,
    /// each line prefixed with its pod.
    #[arg(long)]
    instance: Option<String>,
    /// Follow the logs.
    #[arg(short, long)]
    follow: bool,
    /// Only the last N lines of each pod. Default: all.
    #[arg(long)]
    tail: Option<i64>,
    /// Print the kubectl command instead of running it.
    #[arg(long)]
    print_command: bool,
}

/// psql as `postgres` on the primary's socket: the agent puts it in `$PGWARDEN_SOCKET_DIR`
/// (default `/tmp`) unless the container sets `$PGHOST`.
const PSQL_SHELL: &str =
    r#"export PGHOST="${PGHOST:-${PGWARDEN_SOCKET_DIR:-/tmp}}"; exec psql -U postgres "$@""#;

pub async fn psql(target: &Target, args: &PsqlArgs) -> Result<ExitCode> {
    let cluster = get_cluster(target, &args.cluster).await?;
    let primary = cluster
        .status
        .and_then(|s| s.current_primary)
        .with_context(|| {
            format!(
                "Cluster {} has no primary yet (status.currentPrimary is empty)",
                args.cluster
            )
        })?;
    let mut words = vec!["exec".to_string()];
    // -t only on a terminal: psql's prompt and line editing need one, a pipe must not get one.
    words.push(
        if std::io::stdin().is_terminal() {
            "-it"
        } else {
            "-i"
        }
        .into(),
    );
    words.extend([primary, "-c".into(), CONTAINER.into(), "--".into()]);
    words.extend(["sh", "-c", PSQL_SHELL, "psql"].map(String::from));
    words.extend(args.psql_args.iter().cloned());
    kubectl(target, words, args.print_command)
}

pub async fn logs(target: &Target, args: &LogsArgs) -> Result<ExitCode> {
    let cluster = get_cluster(target, &args.cluster).await?;
    let mut words = vec!["logs".to_string()];
    match &args.instance {
        Some(instance) => words.push(instance_pod(
            &args.cluster,
            instance,
            cluster.spec.instances,
        )?),
        None => {
            // Instance pods carry the role label, the Cluster's other objects do not.
            words.extend([
                "-l".into(),
                format!("{LABEL_CLUSTER}={},{LABEL_ROLE}", args.cluster),
                "--prefix".into(),
                // With a selector kubectl shows 10 lines unless told otherwise.
                format!("--tail={}", args.tail.unwrap_or(-1)),
            ]);
        }
    }
    words.extend(["-c".into(), CONTAINER.into()]);
    if args.instance.is_some()
        && let Some(tail) = args.tail
    {
        words.push(format!("--tail={tail}"));
    }
    if args.follow {
        words.push("--follow".into());
    }
    kubectl(target, words, args.print_command)
}

/// The pod of instance `instance` (a number or a pod name) of Cluster `cluster`.
fn instance_pod(cluster: &str, instance: &str, instances: i32) -> Result<String> {
    let number = instance
        .strip_prefix(&format!("{cluster}-"))
        .unwrap_or(instance);
    match number.parse::<i32>() {
        Ok(n) if (1..=instances.max(1)).contains(&n) => Ok(format!("{cluster}-{n}")),
        _ => bail!(
            "--instance {instance}: Cluster {cluster} has instances 1 to {instances} (pods {cluster}-1 to {cluster}-{instances})"
        ),
    }
}

/// Runs kubectl with `words` in the target's kubeconfig, context and namespace (replacing this
/// process, so signals and the terminal are kubectl's), or prints the command.
fn kubectl(target: &Target, words: Vec<String>, print: bool) -> Result<ExitCode> {
    let mut all = target.kubectl_args.clone();
    all.extend(["--namespace".into(), target.namespace.clone()]);
    all.extend(words);
    if print {
        println!("kubectl {}", shell_words(&all));
        return Ok(ExitCode::SUCCESS);
    }
    let err = std::process::Command::new("kubectl").args(&all).exec();
    Err(err).context("cannot run kubectl (is it on the PATH?)")
}

/// `words` quoted for a POSIX shell where needed.
fn shell_words(words: &[String]) -> String {
    let plain = |w: &str| {
        !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./=,:@".contains(c))
    };
    words
        .iter()
        .map(|w| {
            if plain(w) {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
