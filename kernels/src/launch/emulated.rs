//! Launches through the host emulation of CUDA (`kernels/emu`, built by `build.rs`): the kernels
//! run to completion on the calling thread and a few helpers, each CUDA thread a fiber.
//!
//! Every launch has a seed that fixes its thread order between barriers and its wmma fragment
//! layouts. By default seeds follow from this thread's seed base ([`set_seed`]) and the launch's
//! index on the thread, so a test repeats exactly; `OXTUNE_EMU_SEED=<n>` makes every launch use
//! seed n (a failure message names the seed to use). `OXTUNE_EMU_ARCH` (80, 86, 89, 90; default 86,
//! the strictest shared-memory limit of the GPUs we run on: A10G, L4, L40S) picks the launch
//! limits; `OXTUNE_EMU_THREADS` the OS threads that run blocks (default: one per core).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::Path;

use candle_core::cpu_backend::CpuStorage;
use candle_core::{bail, Result};

use super::Arg;

/// Where the emulator's objects were built (the mutation tests link variants against them).
pub const BUILD_DIR: &str = env!("OXEMU_BUILD_DIR");

#[repr(C)]
struct RawArg {
    kind: u32,
    reserved: u32,
    value: u64,
    len: u64,
    align_offset: u64,
}

#[repr(C)]
struct Options {
    seed: u64,
    arch: u32,
    max_dynamic_smem: u32,
    threads: u32,
    reserved: u32,
}

type LaunchFn = unsafe extern "C" fn(
    *const c_char,
    *const u32,
    *const u32,
    u32,
    *const RawArg,
    u32,
    *const Options,
    *mut c_char,
    usize,
) -> c_int;
type CountFn = unsafe extern "C" fn() -> u32;
type NameFn = unsafe extern "C" fn(u32) -> *const c_char;

extern "C" {
    fn oxemu_launch(
        kernel: *const c_char,
        grid: *const u32,
        block: *const u32,
        dynamic_smem: u32,
        args: *const RawArg,
        nargs: u32,
        opts: *const Options,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn oxemu_kernel_count() -> u32;
    fn oxemu_kernel_name(i: u32) -> *const c_char;
}

/// A set of emulated kernels: those built into this binary, or a shared library built from other
/// kernel sources (the mutation tests).
#[derive(Clone, Copy)]
pub struct Library {
    launch: LaunchFn,
    count: CountFn,
    name: NameFn,
}

impl Library {
    pub fn builtin() -> Library {
        Library { launch: oxemu_launch, count: oxemu_kernel_count, name: oxemu_kernel_name }
    }

    /// Loads a library linked by `kernels/emu/prepare.rs` (`link_shared`). It stays loaded.
    pub fn load(path: &Path) -> Result<Library> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(candle_core::Error::wrap)?;
        // SAFETY: dlopen/dlsym with valid C strings; the symbols have the C signatures of
        // kernels/emu/oxemu_api.h, which the library was built from.
        unsafe {
            let h = libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            if h.is_null() {
                let e = CStr::from_ptr(libc::dlerror()).to_string_lossy().into_owned();
                bail!("cannot load emulated kernels from {}: {e}", path.display())
            }
            let sym = |name: &CStr| {
                let p = libc::dlsym(h, name.as_ptr());
                if p.is_null() {
                    bail!("{} has no {}", path.display(), name.to_string_lossy())
                }
                Ok(p)
            };
            Ok(Library {
                launch: std::mem::transmute::<*mut libc::c_void, LaunchFn>(sym(c"oxemu_launch")?),
                count: std::mem::transmute::<*mut libc::c_void, CountFn>(sym(c"oxemu_kernel_count")?),
                name: std::mem::transmute::<*mut libc::c_void, NameFn>(sym(c"oxemu_kernel_name")?),
            })
        }
    }

    /// The `extern "C" __global__` entry points it holds, sorted.
    pub fn kernel_names(&self) -> Vec<String> {
        // SAFETY: the library returns valid NUL-terminated names for i < count.
        unsafe {
            (0..(self.count)())
                .filter_map(|i| {
                    let p = (self.name)(i);
                    (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
                })
                .collect()
        }
    }
}

thread_local! {
    static LIBRARY: Cell<Option<Library>> = const { Cell::new(None) };
    static SEED_BASE: Cell<u64> = const { Cell::new(0x6f78_7475_6e65) };
    static LAUNCH_INDEX: Cell<u64> = const { Cell::new(0) };
    static COUNTS: RefCell<BTreeMap<String, u64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Kernels of this thread's launches come from `lib` (None: the built-in ones).
pub fn use_library(lib: Option<Library>) {
    LIBRARY.with(|l| l.set(lib));
}

/// This thread's launches take seeds derived from `base` and their index from now on.
pub fn set_seed(base: u64) {
    SEED_BASE.with(|s| s.set(base));
    LAUNCH_INDEX.with(|i| i.set(0));
}

/// Completed launches per kernel on this thread since the last call.
pub fn take_launch_counts() -> BTreeMap<String, u64> {
    COUNTS.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn env_u64(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().map(Some).map_err(|_| candle_core::Error::Msg(format!("{name}={v} is not a number"))),
        Err(_) => Ok(None),
    }
}

fn next_seed() -> Result<u64> {
    if let Some(s) = env_u64("OXTUNE_EMU_SEED")? {
        return Ok(s);
    }
    let i = LAUNCH_INDEX.with(|i| {
        let v = i.get();
        i.set(v + 1);
        v
    });
    Ok(splitmix(SEED_BASE.with(Cell::get) ^ splitmix(i)))
}

/// Address of the first element of a CPU storage.
pub(super) fn base_address(cs: &CpuStorage) -> Result<u64> {
    Ok(match cs {
        CpuStorage::U8(v) => v.as_ptr() as u64,
        CpuStorage::U32(v) => v.as_ptr() as u64,
        CpuStorage::I64(v) => v.as_ptr() as u64,
        CpuStorage::BF16(v) => v.as_ptr() as u64,
        CpuStorage::F16(v) => v.as_ptr() as u64,
        CpuStorage::F32(v) => v.as_ptr() as u64,
        other => bail!("emulated kernels do not take {:?} tensors", candle_core::backend::BackendStorage::dtype(other)),
    })
}

/// Runs `func` on the emulator (this thread's library, see [`use_library`]); the ops call it
/// through [`Gpu::launch`](super::Gpu); tests call it directly to check the emulator itself.
pub fn launch(
    func: &str,
    grid: (u32, u32, u32),
    block: (u32, u32, u32),
    shared_mem_bytes: u32,
    args: &[Arg],
) -> Result<()> {
    let raw: Vec<RawArg> = args
        .iter()
        .map(|a| match a {
            Arg::Buf(b) => RawArg { kind: 0, reserved: 0, value: b.addr, len: b.len, align_offset: b.offset },
            Arg::I32(v) => RawArg { kind: 1, reserved: 0, value: *v as i64 as u64, len: 0, align_offset: 0 },
            Arg::I64(v) => RawArg { kind: 2, reserved: 0, value: *v as u64, len: 0, align_offset: 0 },
            Arg::F32(v) => RawArg { kind: 3, reserved: 0, value: v.to_bits() as u64, len: 0, align_offset: 0 },
        })
        .collect();
    let opts = Options {
        seed: next_seed()?,
        arch: env_u64("OXTUNE_EMU_ARCH")?.unwrap_or(86) as u32,
        max_dynamic_smem: 0, // no kernel of ours raises the attribute (all shared memory is static)
        threads: env_u64("OXTUNE_EMU_THREADS")?.unwrap_or(0) as u32,
        reserved: 0,
    };
    let name = CString::new(func).map_err(candle_core::Error::wrap)?;
    let lib = LIBRARY.with(Cell::get).unwrap_or_else(Library::builtin);
    let mut err = vec![0u8; 4096];
    let (g, b) = ([grid.0, grid.1, grid.2], [block.0, block.1, block.2]);
    // SAFETY: every buffer argument comes from a live tensor of at least `len` bytes (kernels
    // touch no more: the emulator checks it), and the emulator writes at most err.len() bytes.
    let rc = unsafe {
        (lib.launch)(
            name.as_ptr(),
            g.as_ptr(),
            b.as_ptr(),
            shared_mem_bytes,
            raw.as_ptr(),
            raw.len() as u32,
            &opts,
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    if rc != 0 {
        let msg = CStr::from_bytes_until_nul(&err).map(|c| c.to_string_lossy().into_owned()).unwrap_or_default();
        bail!("emulated CUDA: {msg}")
    }
    COUNTS.with(|c| *c.borrow_mut().entry(func.to_string()).or_default() += 1);
    Ok(())
}
