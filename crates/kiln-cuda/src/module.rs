//! Loaded modules, their kernels, launch geometry and type-erased launches.

use std::sync::Arc;

use cudarc::driver::sys::CUfunction_attribute as FnAttr;
use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use serde::{Deserialize, Serialize};

use crate::device::{DeviceFacts, Gpu};
use crate::error::{CudaError, Result};

/// Shared memory a block gets without opting in.
const DEFAULT_SMEM_LIMIT: u32 = 48 * 1024;

/// A compiled image loaded into a context.
#[derive(Debug, Clone)]
pub struct Module {
    name: String,
    inner: Arc<CudaModule>,
    facts: DeviceFacts,
}

impl Module {
    pub(crate) fn new(name: String, inner: Arc<CudaModule>, facts: DeviceFacts) -> Self {
        Self { name, inner, facts }
    }

    /// The module's name (the compile request's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current bytes of a module-scope global (`cuModuleGetGlobal`).
    pub fn read_global(&self, gpu: &Gpu, name: &str) -> Result<Vec<u8>> {
        let view = self
            .inner
            .get_global(name, gpu.stream())
            .map_err(CudaError::driver("cuModuleGetGlobal"))?;
        let mut host = vec![0u8; view.len()];
        if !host.is_empty() {
            gpu.stream()
                .memcpy_dtoh(&view, &mut host)
                .map_err(CudaError::driver("cuMemcpyDtoH"))?;
            gpu.synchronize()?;
        }
        Ok(host)
    }

    /// Overwrites a module-scope global with `bytes` (which must match its size).
    pub fn write_global(&self, gpu: &Gpu, name: &str, bytes: &[u8]) -> Result<()> {
        let mut view = self
            .inner
            .get_global(name, gpu.stream())
            .map_err(CudaError::driver("cuModuleGetGlobal"))?;
        if view.len() != bytes.len() {
            return Err(CudaError::SelfCheck(format!(
                "global `{name}` holds {} bytes, not {}",
                view.len(),
                bytes.len()
            )));
        }
        if !bytes.is_empty() {
            gpu.stream()
                .memcpy_htod(bytes, &mut view)
                .map_err(CudaError::driver("cuMemcpyHtoD"))?;
        }
        Ok(())
    }

    /// Looks up an `extern "C" __global__` entry point.
    pub fn kernel(&self, entry: &str) -> Result<Kernel> {
        let func = self
            .inner
            .load_function(entry)
            .map_err(|_| CudaError::MissingKernel {
                module: self.name.clone(),
                entry: entry.to_string(),
            })?;
        Ok(Kernel {
            name: entry.to_string(),
            func,
            facts: self.facts.clone(),
        })
    }
}

/// What one compiled kernel costs a multiprocessor at one launch geometry, as
/// the driver reports it: what limits occupancy, and whether it spills.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KernelResources {
    /// Registers per thread.
    pub registers: u32,
    /// Local memory per thread in bytes (register spills and local arrays).
    pub local_bytes: u32,
    /// Static shared memory per block in bytes (the launch's dynamic part is apart).
    pub static_smem_bytes: u32,
    /// Blocks of this launch resident on one multiprocessor at once.
    pub blocks_per_sm: u32,
    /// Resident threads over the multiprocessor's maximum, in `[0, 1]`.
    pub occupancy: f64,
}

impl KernelResources {
    /// One phrase for prompts and reports: `40 regs, 0 B local, 8 blocks/SM (100 % occupancy)`.
    pub fn describe(&self) -> String {
        format!(
            "{} regs, {} B local, {} blocks/SM ({:.0} % occupancy)",
            self.registers,
            self.local_bytes,
            self.blocks_per_sm,
            self.occupancy * 100.0
        )
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LaunchDims {
    /// Blocks in x, y, z.
    pub grid: (u32, u32, u32),
    /// Threads per block in x, y, z.
    pub block: (u32, u32, u32),
    /// Dynamic shared memory per block in bytes.
    pub smem: u32,
}

impl LaunchDims {
    /// A 1-D launch.
    pub fn linear(grid: u32, block: u32, smem: u32) -> Self {
        Self {
            grid: (grid, 1, 1),
            block: (block, 1, 1),
            smem,
        }
    }

    /// Threads per block.
    pub fn threads_per_block(&self) -> u64 {
        self.block.0 as u64 * self.block.1 as u64 * self.block.2 as u64
    }

    /// The cudarc launch configuration.
    pub fn to_config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: self.grid,
            block_dim: self.block,
            shared_mem_bytes: self.smem,
        }
    }
}

/// One argument of a type-erased launch (candidate kernels have target-defined
/// signatures known only at run time).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    /// A device pointer.
    Ptr(u64),
    /// A 32-bit signed integer.
    I32(i32),
    /// A 32-bit unsigned integer.
    U32(u32),
    /// A 32-bit float.
    F32(f32),
}

/// An entry point ready to launch.
#[derive(Debug, Clone)]
pub struct Kernel {
    name: String,
    func: CudaFunction,
    facts: DeviceFacts,
}

impl Kernel {
    /// The entry point's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cudarc function, for typed launches through `launch_builder`.
    pub fn function(&self) -> &CudaFunction {
        &self.func
    }

    /// Registers, local memory, shared memory and occupancy at `dims` (call
    /// after [`Kernel::prepare`], which opts in to large dynamic shared memory).
    pub fn resources(&self, dims: &LaunchDims) -> Result<KernelResources> {
        let attr = |a: FnAttr, what: &'static str| {
            self.func
                .get_attribute(a)
                .map(|v| v.max(0) as u32)
                .map_err(CudaError::driver(what))
        };
        let registers = attr(
            FnAttr::CU_FUNC_ATTRIBUTE_NUM_REGS,
            "cuFuncGetAttribute(regs)",
        )?;
        let local_bytes = attr(
            FnAttr::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES,
            "cuFuncGetAttribute(local bytes)",
        )?;
        let static_smem_bytes = attr(
            FnAttr::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
            "cuFuncGetAttribute(static smem)",
        )?;
        let threads = dims.threads_per_block();
        let blocks_per_sm = self
            .func
            .occupancy_max_active_blocks_per_multiprocessor(
                threads as u32,
                dims.smem as usize,
                None,
            )
            .map_err(CudaError::driver(
                "cuOccupancyMaxActiveBlocksPerMultiprocessor",
            ))?;
        let occupancy = match self.facts.max_threads_per_sm {
            0 => 0.0,
            max => (blocks_per_sm as f64 * threads as f64 / max as f64).min(1.0),
        };
        Ok(KernelResources {
            registers,
            local_bytes,
            static_smem_bytes,
            blocks_per_sm,
            occupancy,
        })
    }

    /// Checks `dims` against the device limits and, when the launch wants more
    /// than 48 KiB of dynamic shared memory, opts the kernel in.
    pub fn prepare(&self, dims: &LaunchDims) -> Result<LaunchConfig> {
        let bad = |reason: String| CudaError::BadLaunch {
            kernel: self.name.clone(),
            reason,
        };
        let threads = dims.threads_per_block();
        if threads == 0 || threads > self.facts.max_threads_per_block as u64 {
            return Err(bad(format!(
                "block of {threads} threads; the device allows 1..={}",
                self.facts.max_threads_per_block
            )));
        }
        if dims.grid.0 == 0 || dims.grid.1 == 0 || dims.grid.2 == 0 {
            return Err(bad(format!("empty grid {:?}", dims.grid)));
        }
        if dims.grid.1 > 65_535 || dims.grid.2 > 65_535 {
            return Err(bad(format!(
                "grid {:?}: y and z are limited to 65535",
                dims.grid
            )));
        }
        if dims.smem > self.facts.max_smem_per_block_optin {
            return Err(bad(format!(
                "{} bytes of dynamic shared memory; the device allows {}",
                dims.smem, self.facts.max_smem_per_block_optin
            )));
        }
        if dims.smem > DEFAULT_SMEM_LIMIT {
            // SAFETY: `func` is a live function of a loaded module.
            unsafe {
                cudarc::driver::result::function::set_function_attribute(
                    self.func.cu_function(),
                    FnAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    dims.smem as i32,
                )
            }
            .map_err(CudaError::driver("cuFuncSetAttribute(max dynamic smem)"))?;
        }
        Ok(dims.to_config())
    }

    /// Launches with type-erased arguments on the GPU's stream.
    ///
    /// # Safety
    /// The arguments must match the kernel's parameter list and every pointer
    /// must address memory the kernel may touch for these dims.
    pub unsafe fn launch(&self, gpu: &Gpu, dims: &LaunchDims, args: &[KernelArg]) -> Result<()> {
        let cfg = self.prepare(dims)?;
        let mut builder = gpu.stream().launch_builder(&self.func);
        for arg in args {
            match arg {
                KernelArg::Ptr(p) => builder.arg(p),
                KernelArg::I32(v) => builder.arg(v),
                KernelArg::U32(v) => builder.arg(v),
                KernelArg::F32(v) => builder.arg(v),
            };
        }
        // SAFETY: forwarded to the caller.
        unsafe { builder.launch(cfg) }
            .map(|_| ())
            .map_err(CudaError::driver("cuLaunchKernel"))
    }
}
