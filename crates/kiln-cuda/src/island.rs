//! Device memory alone in its own stretch of address space: an [`Island`].
//!
//! `cuMemAlloc` rounds an allocation up to its page size and packs small
//! allocations next to each other, so memory just past a buffer is either
//! slack that belongs to no one (mapped, never read by anyone) or the next
//! allocation. A kernel that writes there is not faulted: it can keep state
//! from one launch to the next, or change memory its caller relies on. An
//! island is mapped through the driver's virtual memory calls in the middle
//! of an address range reserved for it alone, with unmapped gaps of a
//! caller-chosen (random) size on both sides: every mapped byte belongs to
//! the island's owner, and an access that leaves the island faults.

use std::sync::Arc;

use cudarc::driver::{sys, CudaContext};

use crate::{CudaError, Gpu, Result};

/// Page size of the driver's virtual memory mappings on every GPU kiln
/// targets: islands are mapped, and their gaps reserved, in whole pages.
pub const ISLAND_PAGE: usize = 2 << 20;

/// Device memory mapped alone in an address range reserved for it, with
/// unmapped gaps before and after (see the module docs).
pub struct Island {
    ctx: Arc<CudaContext>,
    reserved: sys::CUdeviceptr,
    reserved_bytes: usize,
    mapped: sys::CUdeviceptr,
    mapped_bytes: usize,
    handle: sys::CUmemGenericAllocationHandle,
}

impl std::fmt::Debug for Island {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Island")
            .field("ptr", &self.mapped)
            .field("bytes", &self.mapped_bytes)
            .finish()
    }
}

fn check(call: &'static str, status: sys::CUresult) -> Result<()> {
    status.result().map_err(CudaError::driver(call))
}

impl Island {
    /// At least `bytes` of device memory (rounded up to whole
    /// [`ISLAND_PAGE`]s, every byte the caller's), with `gap_before` and
    /// `gap_after` pages of unmapped address space on either side.
    pub fn new(gpu: &Gpu, bytes: usize, gap_before: usize, gap_after: usize) -> Result<Self> {
        let ctx = gpu.context().clone();
        ctx.bind_to_thread()
            .map_err(CudaError::driver("cuCtxSetCurrent"))?;
        let vmm = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED,
            )
            .map_err(CudaError::driver("cuDeviceGetAttribute"))?;
        if vmm == 0 {
            return Err(CudaError::SelfCheck(format!(
                "GPU {} ({}) or its driver does not support the driver's virtual memory calls, which \
                 kiln's judge needs to map every candidate buffer alone; use a GPU and driver that \
                 support them (`kiln doctor` checks it)",
                gpu.facts().ordinal,
                gpu.facts().name
            )));
        }
        let mapped_bytes = bytes.max(1).div_ceil(ISLAND_PAGE) * ISLAND_PAGE;
        let reserved_bytes = mapped_bytes + (gap_before + gap_after) * ISLAND_PAGE;
        // SAFETY: a zeroed CUmemAllocationProp is the documented default; the
        // fields set below pick pinned device memory on this GPU.
        let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = gpu.facts().ordinal as i32;
        let mut granularity = 0usize;
        // SAFETY: valid out-pointer and property struct.
        check("cuMemGetAllocationGranularity", unsafe {
            sys::cuMemGetAllocationGranularity(
                &mut granularity,
                &prop,
                sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
            )
        })?;
        if granularity == 0 || !ISLAND_PAGE.is_multiple_of(granularity) {
            return Err(CudaError::SelfCheck(format!(
                "the driver maps device memory in pages of {granularity} bytes; islands need a divisor of {ISLAND_PAGE}"
            )));
        }
        let mut reserved = 0;
        // SAFETY: valid out-pointer; the size is a multiple of the granularity.
        check("cuMemAddressReserve", unsafe {
            sys::cuMemAddressReserve(&mut reserved, reserved_bytes, ISLAND_PAGE, 0, 0)
        })?;
        let mut island = Self {
            ctx,
            reserved,
            reserved_bytes,
            mapped: 0,
            mapped_bytes,
            handle: 0,
        };
        // From here on, Drop releases whatever was set up.
        // SAFETY: valid out-pointer and property struct.
        check("cuMemCreate", unsafe {
            sys::cuMemCreate(&mut island.handle, mapped_bytes, &prop, 0)
        })?;
        let at = reserved + (gap_before * ISLAND_PAGE) as u64;
        // SAFETY: `at..at+mapped_bytes` lies inside the reservation, and the
        // handle holds exactly `mapped_bytes`.
        check("cuMemMap", unsafe {
            sys::cuMemMap(at, mapped_bytes, 0, island.handle, 0)
        })?;
        island.mapped = at;
        let access = sys::CUmemAccessDesc {
            location: prop.location,
            flags: sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE,
        };
        // SAFETY: the range was just mapped; one access descriptor.
        check("cuMemSetAccess", unsafe {
            sys::cuMemSetAccess(at, mapped_bytes, &access, 1)
        })?;
        Ok(island)
    }

    /// Device address of the first mapped byte.
    pub fn ptr(&self) -> u64 {
        self.mapped
    }

    /// Mapped bytes (a whole number of [`ISLAND_PAGE`]s).
    pub fn len(&self) -> usize {
        self.mapped_bytes
    }

    /// Always false: an island maps at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn check_range(&self, what: &str, offset: usize, len: usize) -> Result<u64> {
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.mapped_bytes)
        {
            return Err(CudaError::SelfCheck(format!(
                "{what} of {len} bytes at {offset} does not fit a {}-byte island",
                self.mapped_bytes
            )));
        }
        Ok(self.mapped + offset as u64)
    }

    /// Copies host bytes into the island from byte `offset` (on the GPU's
    /// stream; the host bytes are staged before this returns).
    pub fn upload(&mut self, gpu: &Gpu, offset: usize, host: &[u8]) -> Result<()> {
        let at = self.check_range("a write", offset, host.len())?;
        if host.is_empty() {
            return Ok(());
        }
        // SAFETY: `at..at+len` is mapped (checked above); pageable host
        // memory is staged by the driver before the call returns.
        check("cuMemcpyHtoDAsync", unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                at,
                host.as_ptr().cast(),
                host.len(),
                gpu.stream().cu_stream(),
            )
        })
    }

    /// Copies `len` bytes from byte `offset` to the host (waits for the stream).
    pub fn download(&self, gpu: &Gpu, offset: usize, len: usize) -> Result<Vec<u8>> {
        let at = self.check_range("a read", offset, len)?;
        let mut host = vec![0u8; len];
        if len > 0 {
            // SAFETY: `at..at+len` is mapped, `host` holds `len` bytes and
            // outlives the copy (the stream is synchronised before return).
            check("cuMemcpyDtoHAsync", unsafe {
                sys::cuMemcpyDtoHAsync_v2(
                    host.as_mut_ptr().cast(),
                    at,
                    len,
                    gpu.stream().cu_stream(),
                )
            })?;
            gpu.synchronize()?;
        }
        Ok(host)
    }

    /// Copies `len` bytes from device address `src` to byte `offset` of the
    /// island (enqueued on the stream).
    ///
    /// # Safety
    /// `src..src+len` must be readable device memory of this context that
    /// stays allocated until the copy has run.
    pub unsafe fn copy_from(
        &mut self,
        gpu: &Gpu,
        src: u64,
        offset: usize,
        len: usize,
    ) -> Result<()> {
        let at = self.check_range("a copy", offset, len)?;
        if len == 0 {
            return Ok(());
        }
        check("cuMemcpyDtoDAsync", unsafe {
            sys::cuMemcpyDtoDAsync_v2(at, src, len, gpu.stream().cu_stream())
        })
    }

    /// Fills `len` bytes from byte `offset` with a repeated 1-, 2- or 4-byte
    /// word (the low bytes of `pattern`; enqueued on the stream).
    pub fn fill(
        &mut self,
        gpu: &Gpu,
        offset: usize,
        len: usize,
        word_bytes: usize,
        pattern: u32,
    ) -> Result<()> {
        let word = word_bytes.max(1);
        let at = self.check_range("a fill", offset, len)?;
        if !offset.is_multiple_of(word) || !len.is_multiple_of(word) {
            return Err(CudaError::SelfCheck(format!(
                "a fill of {len} bytes at {offset} is not in whole {word}-byte words"
            )));
        }
        // SAFETY: `at..at+len` is mapped (checked above), in whole words.
        unsafe { crate::device::memset_words(at, len, word, pattern, gpu.stream().cu_stream()) }
    }
}

impl Drop for Island {
    fn drop(&mut self) {
        // Work still queued may touch the island: let it finish first.
        // Errors cannot be returned from drop; a failed release leaks the
        // address range, which is all that is at stake.
        let _ = self.ctx.bind_to_thread();
        // SAFETY: each call undoes one step of `new` that succeeded, in
        // reverse order, after every queued use of the island.
        unsafe {
            let _ = sys::cuCtxSynchronize();
            if self.mapped != 0 {
                let _ = sys::cuMemUnmap(self.mapped, self.mapped_bytes);
            }
            if self.handle != 0 {
                let _ = sys::cuMemRelease(self.handle);
            }
            let _ = sys::cuMemAddressFree(self.reserved, self.reserved_bytes);
        }
    }
}
