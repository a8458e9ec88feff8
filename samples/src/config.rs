//! Configuration shared by the three binaries: each flag falls back to an environment variable
//! (how a Kubernetes manifest usually configures a container), then to a default taken from
//! the sample mesh in `manifests/samples/todolist`. The environment is read through [`Env`] so
//! tests pass a list instead of mutating the process environment.

use std::net::SocketAddr;
use std::process::ExitCode;

// The workspace's one environment abstraction, re-exported for the three binaries.
pub use mast_env::{Env, ProcessEnv};

/// The address to listen on.
pub const LISTEN: &str = "LISTEN";

/// The exit code for bad configuration (`EX_USAGE`), as the other Mast binaries use.
const EXIT_USAGE: u8 = 64;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command line, or `--help`/`--version` (which clap reports as an "error").
    #[error(transparent)]
    Usage(#[from] clap::Error),
    /// A value that does not parse: the flag or variable it came from, the value, and why.
    #[error("{name}={value:?}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: &'static str,
    },
}

/// A value given on the command line or in the environment, with where it came from so an
/// error can name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub value: String,
}

// === impl Error ===

impl Error {
    /// Prints the error and gives the exit code: 0 after `--help`, 64 otherwise.
    pub fn report(&self, program: &str) -> ExitCode {
        match self {
            Error::Usage(e) => {
                let _ = e.print();
                if e.use_stderr() {
                    ExitCode::from(EXIT_USAGE)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Error::Invalid { .. } => {
                eprintln!("{program}: bad configuration: {self}");
                ExitCode::from(EXIT_USAGE)
            }
        }
    }
}

// === impl Setting ===

impl Setting {
    /// The flag's value if given, else the variable's (an empty variable counts as unset).
    pub fn lookup(flag: &str, given: Option<String>, env: &dyn Env, var: &str) -> Option<Self> {
        match given {
            Some(value) => Some(Setting {
                name: format!("--{flag}"),
                value,
            }),
            None => env.var(var).filter(|v| !v.is_empty()).map(|value| Setting {
                name: var.to_string(),
                value,
            }),
        }
    }

    pub fn invalid(&self, reason: &'static str) -> Error {
        Error::Invalid {
            name: self.name.clone(),
            value: self.value.clone(),
            reason,
        }
    }

    pub fn parse_listen(&self) -> Result<SocketAddr, Error> {
        self.value
            .parse()
            .map_err(|_| self.invalid("expected IP:PORT, e.g. 127.0.0.1:9080"))
    }
}

/// `--listen` / `LISTEN`, or `default`.
pub fn listen(
    given: Option<String>,
    env: &dyn Env,
    default: SocketAddr,
) -> Result<SocketAddr, Error> {
    listen_as("listen", LISTEN, given, env, default)
}

/// A second listening address (`--grpc-listen` / `GRPC_LISTEN`, …), or `default`.
pub fn listen_as(
    flag: &str,
    var: &str,
    given: Option<String>,
    env: &dyn Env,
    default: SocketAddr,
) -> Result<SocketAddr, Error> {
    match Setting::lookup(flag, given, env, var) {
        Some(s) => s.parse_listen(),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const DEFAULT: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 1);

    #[test]
    fn flag_wins_over_env_which_wins_over_default() {
        let env = HashMap::from([(LISTEN, "127.0.0.1:2")]);
        let flag = Some("127.0.0.1:3".to_string());
        assert_eq!(listen(flag, &env, DEFAULT).unwrap().port(), 3);
        assert_eq!(listen(None, &env, DEFAULT).unwrap().port(), 2);
        assert_eq!(listen(None, &HashMap::new(), DEFAULT).unwrap().port(), 1);
        let empty = HashMap::from([(LISTEN, "")]);
        assert_eq!(listen(None, &empty, DEFAULT).unwrap().port(), 1);
    }

    #[test]
    fn a_bad_value_is_reported_with_its_source() {
        let env = HashMap::from([(LISTEN, "localhost")]);
        let e = listen(None, &env, DEFAULT).unwrap_err().to_string();
        assert!(
            e.starts_with("LISTEN=\"localhost\": expected IP:PORT"),
            "{e}"
        );
        let e = listen(Some("x".into()), &env, DEFAULT)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--listen=\"x\""), "{e}");
    }
}
