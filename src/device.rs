//! Which device computes: `--device cpu|cuda[:N]`, the default, and why a GPU is not used.
//!
//! A build with `--features cuda` computes on the first GPU unless told otherwise. Without
//! a usable one it says why (no NVIDIA driver, a driver too old, no GPU, a CUDA library
//! missing, a GPU older than the kernels were built for) and what to install, and computes
//! on the CPU; asked for the GPU (`--device cuda`), it refuses with the same reason
//! instead. A build without CUDA computes on the CPU and refuses `--device cuda`, saying
//! how to build one that has it.
//!
//! The checks come before candle touches CUDA: a CUDA build made by `scripts/build-cuda`
//! opens the CUDA libraries only when the GPU is first used (cudarc's `dynamic-loading`),
//! and cudarc panics, naming no fix, when one is missing.
//!
//! In the layers: at the bottom beside `error`; the command line and the benchmarks choose
//! their device here.

use crate::error::{Error, Result};
use candle_core::Device;
use std::fmt;
use std::str::FromStr;

/// What the user asked for (`--device`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// The first GPU when this build has CUDA and one is usable, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The GPU with this number, from 0 (CUDA's order).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let lower = text.trim().to_ascii_lowercase();
        match lower.as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => match lower.strip_prefix("cuda:") {
                Some(number) => number.parse().map(DeviceChoice::Cuda).map_err(|_| {
                    Error::config(format!(
                        "device {text:?}: the GPU's number after `cuda:` must be 0, 1, 2, ... \
                         (cuda:0 is the first GPU)"
                    ))
                }),
                None => Err(Error::config(format!(
                    "device {text:?}: expected cpu, cuda (the first GPU), cuda:N (GPU number N, \
                     from 0) or auto"
                ))),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Why no GPU is used, with what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// This gfer was built without `--features cuda`.
    NotBuilt,
    /// The NVIDIA driver's library (libcuda.so.1) is not on the loader's path.
    NoDriver,
    /// The driver supports an older CUDA than the kernels need (versions as 13000 = 13.0).
    DriverTooOld { driver: i32, needed: i32 },
    /// The driver found no GPU.
    NoGpu,
    /// `cuda:N` with fewer GPUs than that.
    NoSuchGpu { ordinal: usize, count: usize },
    /// CUDA's libraries that candle opens (cuBLAS, cuRAND) are not on the loader's path.
    MissingLibraries(Vec<&'static str>),
    /// The GPU is older than the compute capability the kernels were built for.
    TooOldGpu {
        name: String,
        has: (i32, i32),
        built: u32,
    },
    /// The driver or candle failed to start on the GPU.
    Failed(String),
}

/// The CUDA version whose libraries and PTX a CUDA build of gfer uses (`scripts/build-cuda`).
pub const CUDA_VERSION: &str = "13.0";

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let version = |v: i32| format!("{}.{}", v / 1000, (v % 1000) / 10);
        match self {
            Unavailable::NotBuilt => write!(
                f,
                "this gfer was built without CUDA; build one with it by `scripts/build-cuda` \
                 (or `cargo install --path . --features cuda`), or use --device cpu"
            ),
            Unavailable::NoDriver => write!(
                f,
                "the NVIDIA driver's library libcuda.so.1 was not found: this machine has no \
                 NVIDIA driver, or the loader does not see it; install the driver (580 or newer, \
                 for CUDA {CUDA_VERSION}; `nvidia-smi` then lists the GPU), or add the folder \
                 holding libcuda.so.1 to LD_LIBRARY_PATH"
            ),
            Unavailable::DriverTooOld { driver, needed } => write!(
                f,
                "the NVIDIA driver supports CUDA {} but this gfer's kernels need CUDA {}; \
                 update the driver (580 or newer)",
                version(*driver),
                version(*needed)
            ),
            Unavailable::NoGpu => write!(
                f,
                "the NVIDIA driver found no GPU (check `nvidia-smi`, and that \
                 CUDA_VISIBLE_DEVICES does not hide them)"
            ),
            Unavailable::NoSuchGpu { ordinal, count } => write!(
                f,
                "there is no GPU number {ordinal}: the driver found {count} (numbered from 0)"
            ),
            Unavailable::MissingLibraries(names) => write!(
                f,
                "CUDA {CUDA_VERSION} libraries not found: {}; install CUDA {CUDA_VERSION}'s \
                 cuBLAS and cuRAND (the CUDA toolkit, or `pip install nvidia-cublas \
                 nvidia-curand` for CUDA 13) and put the folder holding them on LD_LIBRARY_PATH \
                 (for pip: site-packages/nvidia/cu13/lib)",
                names.join(", ")
            ),
            Unavailable::TooOldGpu { name, has, built } => write!(
                f,
                "{name} has compute capability {}.{} but this gfer's kernels were built for \
                 {}.{} and newer; build for it with `CUDA_COMPUTE_CAP={}{} scripts/build-cuda`",
                has.0,
                has.1,
                built / 10,
                built % 10,
                has.0,
                has.1
            ),
            Unavailable::Failed(message) => write!(f, "the GPU could not be used: {message}"),
        }
    }
}

/// The device for `choice`, logging which one computes. `Auto` falls back to the CPU with a
/// warning that says why; an explicit `cuda[:N]` that cannot be had is an error.
pub fn select(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Cuda(ordinal) => match cuda::open(ordinal) {
            Ok(device) => Ok(device),
            Err(why) => Err(Error::Device(format!("--device {choice}: {why}"))),
        },
        DeviceChoice::Auto => match cuda::open(0) {
            Ok(device) => Ok(device),
            Err(Unavailable::NotBuilt) => Ok(cpu()),
            Err(why) => {
                tracing::warn!("no GPU: {why}; computing on the CPU (--device cpu says so and skips this check)");
                Ok(cpu())
            }
        },
    }
}

fn cpu() -> Device {
    tracing::info!("device: cpu ({} threads)", rayon::current_num_threads());
    Device::Cpu
}

/// Whether this gfer was built with CUDA.
pub fn built_with_cuda() -> bool {
    cfg!(feature = "cuda")
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    use super::Unavailable;
    use candle_core::Device;

    pub fn open(_ordinal: usize) -> Result<Device, Unavailable> {
        Err(Unavailable::NotBuilt)
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use super::Unavailable;
    use candle_core::cuda::cudarc::driver::{result, sys, CudaContext};
    use candle_core::Device;

    /// The CUDA version the kernels need of the driver (`cuDriverGetVersion`'s form).
    const NEEDED_DRIVER: i32 = 13000;

    /// The compute capability the kernels were built for (`CUDA_COMPUTE_CAP` of the build,
    /// recorded by build.rs), when it was given.
    fn built_compute_cap() -> Option<u32> {
        option_env!("GFER_CUDA_COMPUTE_CAP").and_then(|cap| cap.trim_end_matches('a').parse().ok())
    }

    /// Whether a shared library of one of these names can be loaded.
    fn loadable(names: &[&str]) -> bool {
        names.iter().any(|name| {
            // SAFETY: loading a library runs its initialisers. These are NVIDIA's own
            // driver and CUDA libraries, which cudarc opens by the same names, the same
            // way, as soon as candle uses the GPU; we only open them first to say which
            // one is missing instead of letting cudarc panic.
            unsafe { libloading::Library::new(*name) }.is_ok()
        })
    }

    pub fn open(ordinal: usize) -> Result<Device, Unavailable> {
        if !loadable(&["libcuda.so.1", "libcuda.so"]) {
            return Err(Unavailable::NoDriver);
        }
        let mut driver = 0;
        // SAFETY: cuDriverGetVersion writes one int through a valid pointer; libcuda is
        // loadable (checked above) and it needs no cuInit first.
        let status = unsafe { sys::cuDriverGetVersion(&mut driver) };
        if status != sys::CUresult::CUDA_SUCCESS {
            return Err(Unavailable::Failed(format!(
                "the driver did not tell its version ({status:?})"
            )));
        }
        if driver < NEEDED_DRIVER {
            return Err(Unavailable::DriverTooOld {
                driver,
                needed: NEEDED_DRIVER,
            });
        }
        let count = match CudaContext::device_count() {
            Ok(count) => count.max(0) as usize,
            Err(result::DriverError(sys::CUresult::CUDA_ERROR_NO_DEVICE)) => 0,
            Err(e) => return Err(Unavailable::Failed(format!("starting the driver: {e}"))),
        };
        if count == 0 {
            return Err(Unavailable::NoGpu);
        }
        if ordinal >= count {
            return Err(Unavailable::NoSuchGpu { ordinal, count });
        }
        let missing: Vec<&'static str> = [
            (
                "libcublas.so.13",
                &["libcublas.so.13", "libcublas.so.12", "libcublas.so"][..],
            ),
            (
                "libcublasLt.so.13",
                &["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"][..],
            ),
            ("libcurand.so.10", &["libcurand.so.10", "libcurand.so"][..]),
        ]
        .into_iter()
        .filter(|(_, names)| !loadable(names))
        .map(|(name, _)| name)
        .collect();
        if !missing.is_empty() {
            return Err(Unavailable::MissingLibraries(missing));
        }
        let context = CudaContext::new(ordinal)
            .map_err(|e| Unavailable::Failed(format!("cuda:{ordinal}: {e}")))?;
        let name = context.name().unwrap_or_else(|_| format!("GPU {ordinal}"));
        let capability = context
            .compute_capability()
            .map_err(|e| Unavailable::Failed(format!("{name}: compute capability: {e}")))?;
        if let Some(built) = built_compute_cap() {
            if ((capability.0 * 10 + capability.1) as u32) < built {
                return Err(Unavailable::TooOldGpu {
                    name,
                    has: capability,
                    built,
                });
            }
        }
        let memory = context
            .total_mem()
            .map(|bytes| bytes as f64 / (1u64 << 30) as f64);
        let device =
            Device::new_cuda(ordinal).map_err(|e| Unavailable::Failed(format!("{name}: {e}")))?;
        tracing::info!(
            "device: cuda:{ordinal}, {name} (compute capability {}.{}, {}driver CUDA {}.{})",
            capability.0,
            capability.1,
            memory.map(|m| format!("{m:.1} GiB, ")).unwrap_or_default(),
            driver / 1000,
            (driver % 1000) / 10
        );
        Ok(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse() {
        for (text, choice) in [
            ("cpu", DeviceChoice::Cpu),
            ("CPU", DeviceChoice::Cpu),
            ("auto", DeviceChoice::Auto),
            ("cuda", DeviceChoice::Cuda(0)),
            ("cuda:0", DeviceChoice::Cuda(0)),
            ("cuda:3", DeviceChoice::Cuda(3)),
            (" Cuda:1 ", DeviceChoice::Cuda(1)),
        ] {
            assert_eq!(text.parse::<DeviceChoice>().unwrap(), choice, "{text:?}");
        }
        // Display gives back what parses to the same choice.
        for choice in [DeviceChoice::Auto, DeviceChoice::Cpu, DeviceChoice::Cuda(2)] {
            assert_eq!(choice.to_string().parse::<DeviceChoice>().unwrap(), choice);
        }
    }

    #[test]
    fn bad_device_names_say_what_is_expected() {
        for text in ["gpu", "cuda:", "cuda:-1", "cuda:one", "metal", ""] {
            let message = text.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(message.contains(&format!("{text:?}")), "{message}");
            assert!(message.contains("cuda"), "{message}");
        }
        let message = "cuda:x".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(message.contains("after `cuda:`"), "{message}");
    }

    #[test]
    fn the_cpu_is_the_default_without_a_gpu() {
        assert_eq!(DeviceChoice::default(), DeviceChoice::Auto);
        assert!(select(DeviceChoice::Cpu).unwrap().is_cpu());
        // On a machine without a usable GPU (every CPU build, and every machine of this
        // project's CI), the default is the CPU.
        #[cfg(not(feature = "cuda"))]
        assert!(select(DeviceChoice::Auto).unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_cuda_and_says_how_to_build_with_it() {
        for choice in [DeviceChoice::Cuda(0), DeviceChoice::Cuda(1)] {
            let error = select(choice).unwrap_err();
            let message = error.to_string();
            assert!(message.contains(&format!("--device {choice}")), "{message}");
            assert!(message.contains("built without CUDA"), "{message}");
            assert!(message.contains("scripts/build-cuda"), "{message}");
            assert_eq!(error.kind(), crate::ErrorKind::BadInput);
        }
    }

    #[test]
    fn every_reason_says_what_to_do() {
        let reasons = [
            Unavailable::NotBuilt,
            Unavailable::NoDriver,
            Unavailable::DriverTooOld {
                driver: 12040,
                needed: 13000,
            },
            Unavailable::NoGpu,
            Unavailable::NoSuchGpu {
                ordinal: 2,
                count: 1,
            },
            Unavailable::MissingLibraries(vec!["libcublas.so.13", "libcurand.so.10"]),
            Unavailable::TooOldGpu {
                name: "Tesla T4".into(),
                has: (7, 5),
                built: 90,
            },
        ];
        let advice = [
            "scripts/build-cuda",
            "install the driver",
            "CUDA 12.4 but",
            "nvidia-smi",
            "found 1",
            "LD_LIBRARY_PATH",
            "CUDA_COMPUTE_CAP=75",
        ];
        for (reason, advice) in reasons.iter().zip(advice) {
            let text = reason.to_string();
            assert!(text.contains(advice), "{text:?} lacks {advice:?}");
        }
        let text =
            Unavailable::MissingLibraries(vec!["libcublas.so.13", "libcurand.so.10"]).to_string();
        assert!(text.contains("libcublas.so.13, libcurand.so.10"), "{text}");
    }
}
