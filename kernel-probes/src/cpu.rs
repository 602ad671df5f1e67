//! CPU features that decide how fast ferry can hash and copy: SHA extensions and AVX2.

use serde::Serialize;

/// CPU features detected at run time.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuFeatures {
    /// The target architecture (`x86_64`, `aarch64`, ...).
    pub arch: &'static str,
    /// SHA-256 instructions (x86 SHA-NI, or the Armv8 SHA2 extension).
    pub sha: bool,
    /// AVX2 (x86 only).
    pub avx2: bool,
}

impl CpuFeatures {
    /// Detects the features of the CPU this process runs on.
    pub fn detect() -> CpuFeatures {
        #[cfg(target_arch = "x86_64")]
        let (sha, avx2) = (
            std::arch::is_x86_feature_detected!("sha"),
            std::arch::is_x86_feature_detected!("avx2"),
        );
        #[cfg(target_arch = "aarch64")]
        let (sha, avx2) = (std::arch::is_aarch64_feature_detected!("sha2"), false);
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        let (sha, avx2) = (false, false);
        CpuFeatures {
            arch: std::env::consts::ARCH,
            sha,
            avx2,
        }
    }
}
