//! The one error type of the policy runtime.

use std::fmt;

/// What went wrong with a policy, and at which step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyErrorKind {
    /// The policy file could not be read.
    Io,
    /// Signatures are required and this component's is missing, malformed
    /// or not from a trusted key: refused before compiling.
    Signature,
    /// The file is not a WebAssembly component, or wasmtime rejected it.
    Compile,
    /// The component targets neither `switchyard:policy/policy@0.2.0` nor
    /// 0.1.0, or imports something the router does not provide.
    WrongWorld,
    /// The instance could not be created (pool exhausted, start function
    /// trapped, initial memory over the cap).
    Instantiate,
    /// `init` refused the policy's configuration.
    ConfigRefused,
    /// The guest trapped (panic, abort, unreachable, out-of-bounds access).
    Trap,
    /// The guest used up its fuel: the instruction budget of one call.
    Budget,
    /// The guest ran past the wall-clock backstop.
    Timeout,
    /// The guest tried to grow its memory past the cap.
    MemoryLimit,
    /// The guest answered with a decision the router cannot follow: empty,
    /// naming an unknown backend, too large, or with an invalid status.
    InvalidDecision,
    /// The version kept hitting its wall-clock backstop and is benched for a while.
    Quarantined,
    /// Every decision's turn was taken and the queue of waiting decisions full.
    Overloaded,
    /// No policy of that name is loaded.
    NotFound,
    /// Setting up the runtime itself failed.
    Runtime,
}

impl PolicyErrorKind {
    /// A short stable name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Io => "io",
            Self::Signature => "signature",
            Self::Compile => "compile",
            Self::WrongWorld => "wrong_world",
            Self::Instantiate => "instantiate",
            Self::ConfigRefused => "config_refused",
            Self::Trap => "trap",
            Self::Budget => "budget",
            Self::Timeout => "timeout",
            Self::MemoryLimit => "memory_limit",
            Self::InvalidDecision => "invalid_decision",
            Self::Quarantined => "quarantined",
            Self::Overloaded => "overloaded",
            Self::NotFound => "not_found",
            Self::Runtime => "runtime",
        }
    }
}

/// An error from loading or calling a policy.
///
/// Every error names the policy it came from. [`PolicyError::is_retryable`]
/// tells a caller whether the same call may succeed if made again (a fresh
/// instance, a passing hiccup), as opposed to a fault of the policy file or
/// its configuration that only a new version fixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    kind: PolicyErrorKind,
    policy: String,
    message: String,
}

impl PolicyError {
    /// A new error of `kind` for the policy named `policy`.
    pub fn new(kind: PolicyErrorKind, policy: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind, policy: policy.into(), message: message.into() }
    }

    /// What went wrong.
    pub fn kind(&self) -> PolicyErrorKind {
        self.kind
    }

    /// The name of the policy (or the file, for a policy not yet named).
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// The human-readable detail.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether calling again may succeed. A trap or a timeout ran on an
    /// instance that is now discarded; the next call gets a fresh one. A
    /// spent budget is not retryable: the same request costs the same again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            PolicyErrorKind::Trap
                | PolicyErrorKind::Timeout
                | PolicyErrorKind::MemoryLimit
                | PolicyErrorKind::Instantiate
                | PolicyErrorKind::Quarantined
                | PolicyErrorKind::Overloaded
        )
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy `{}`: {}: {}", self.policy, self.kind.as_str().replace('_', " "), self.message)
    }
}

impl std::error::Error for PolicyError {}
