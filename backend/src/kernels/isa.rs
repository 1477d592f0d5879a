//! The instruction sets the kernels run on, and the one chosen per process (`BITNET_ISA`).

use std::fmt;
use std::sync::OnceLock;

use crate::error::{Result, TernaryError};

/// An instruction set a ternary kernel can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust, the reference every other path must equal.
    Scalar,
    /// NEON (aarch64): `smlal` on the codes read as signed bytes.
    Neon,
    /// AVX2 (with FMA and F16C): `vpmaddubsw` on the unsigned codes.
    Avx2,
    /// AVX-512 with VNNI: `vpdpbusd` (and BW and VL, which its float loops and attention's
    /// masked 16-bit loads use; every CPU with VNNI has them, the check says so).
    Avx512Vnni,
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Scalar => "scalar",
            Self::Neon => "neon",
            Self::Avx2 => "avx2",
            Self::Avx512Vnni => "avx512",
        })
    }
}

impl Isa {
    /// Every instruction set this build knows, fastest last (a CPU has either NEON or the x86
    /// paths).
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512Vnni];

    /// Whether this CPU can run the path. Both x86 vector paths also compile float loops with
    /// FMA and read f16 with F16C, which every CPU with AVX2 in practice has, but which are
    /// separate features.
    pub fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        let avx2 = || {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        };
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "aarch64")]
            Self::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => avx2(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Vnni => {
                avx2()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            // The other architecture's paths.
            _ => false,
        }
    }

    /// The paths this CPU supports.
    pub fn supported() -> Vec<Isa> {
        Self::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The fastest path this CPU supports.
    pub fn best() -> Isa {
        Self::supported().pop().unwrap_or(Isa::Scalar)
    }

    /// Parses a `BITNET_ISA` value and checks the CPU has it.
    pub fn parse(value: &str) -> Result<Isa> {
        let isa = match value.trim().to_ascii_lowercase().as_str() {
            "scalar" => Isa::Scalar,
            "neon" => Isa::Neon,
            "avx2" => Isa::Avx2,
            "avx512" | "avx512vnni" | "avx512_vnni" => Isa::Avx512Vnni,
            other => {
                return Err(TernaryError::Dispatch(format!(
                    "BITNET_ISA={other:?} is not one of scalar, neon, avx2, avx512"
                )));
            }
        };
        if !isa.is_supported() {
            return Err(TernaryError::Dispatch(format!(
                "BITNET_ISA={isa} was requested but this CPU does not support it (supported: {})",
                Self::supported()
                    .iter()
                    .map(Isa::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(isa)
    }

    /// The path chosen once per process: `BITNET_ISA` if set, else the best the CPU has.
    pub fn selected() -> Result<Isa> {
        static SELECTED: OnceLock<Result<Isa>> = OnceLock::new();
        SELECTED
            .get_or_init(|| match std::env::var("BITNET_ISA") {
                Ok(value) if !value.trim().is_empty() => Isa::parse(&value),
                _ => Ok(Isa::best()),
            })
            .clone()
    }

    /// Fails with a dispatch error if this CPU cannot run the path.
    pub(crate) fn check_supported(self) -> Result<()> {
        if self.is_supported() {
            Ok(())
        } else {
            Err(TernaryError::Dispatch(format!(
                "the {self} kernel path is not supported by this CPU"
            )))
        }
    }
}
