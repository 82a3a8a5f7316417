//! Envoy-style response flags explaining why an exchange did not go as planned.

use std::fmt;

/// A set of response flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags(u16);

macro_rules! flags {
    ($($name:ident = $bit:expr, $text:literal, $doc:literal;)*) => {
        impl Flags {
            $(#[doc = $doc] pub const $name: Flags = Flags(1 << $bit);)*
            const ALL: &'static [(Flags, &'static str)] = &[$((Flags::$name, $text)),*];
        }
    };
}

flags! {
    NR = 0, "NR", "No route or service for the destination.";
    UH = 1, "UH", "No healthy upstream endpoint.";
    UF = 2, "UF", "Upstream connection failure.";
    UT = 3, "UT", "Upstream request timeout.";
    URX = 4, "URX", "Upstream retry limit exceeded.";
    UC = 5, "UC", "Upstream connection terminated.";
    DC = 6, "DC", "Downstream connection terminated.";
    UPE = 7, "UPE", "Upstream protocol error.";
    DPE = 8, "DPE", "Downstream protocol error.";
    IDLE = 9, "IT", "Idle timeout.";
    UO = 10, "UO", "Upstream overflow (circuit breaker or connection limit).";
    RBAC = 11, "RBAC", "Denied by an authorization policy.";
    FI = 12, "FI", "Aborted by fault injection.";
    DI = 13, "DI", "Delayed by fault injection.";
    PCE = 14, "PCE", "Closed because the peer's certificate expired (Halyard's own flag).";
}

impl Flags {
    /// Adds `other`.
    pub fn set(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Whether all of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether none is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The flags as text, without allocating in the usual case of none (`-`).
    pub fn label(self) -> std::borrow::Cow<'static, str> {
        if self.is_empty() {
            std::borrow::Cow::Borrowed("-")
        } else {
            std::borrow::Cow::Owned(self.to_string())
        }
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, text) in Self::ALL {
            if self.contains(*flag) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(text)?;
                first = false;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays() {
        let mut f = Flags::default();
        assert_eq!(f.to_string(), "-");
        f.set(Flags::UF);
        f.set(Flags::URX);
        assert_eq!(f.to_string(), "UF,URX");
    }
}
