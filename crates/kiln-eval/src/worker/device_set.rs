//! One input set's device buffers, type-erased: the kernel's pointer
//! parameters in signature order, uploaded, poisoned, guarded and read back
//! as raw bytes.
//!
//! An in-out buffer (a recurrent state the kernel updates in place) belongs
//! to the output groups: every launch updates its own copy, and every copy is
//! reset to the drawn values before every launch, as outputs are poisoned.
//!
//! Every buffer sits between two guard zones filled with [`GUARD_BYTE`], in
//! an [`Island`] of its own: device memory mapped alone at a random place in
//! an address range reserved for it, with unmapped gaps on both sides. The
//! trailing guard runs to the island's last mapped byte, so a kernel that
//! writes past either end of any buffer (an output's or an input's) is
//! caught by [`DeviceSet::damaged_guard`], and one that reaches further
//! faults: there is no allocator slack past a buffer to keep state in from
//! one launch to the next, and no judge memory at a distance a kernel could
//! know (the pristine copies of the inputs, the probes' buffers).
//!
//! A set may hold several *output groups* over the same inputs: in a timing
//! graph every launch writes its own outputs, all poisoned before the graph
//! runs, so no launch ever finds an earlier launch's answer where it writes.

use kiln_cuda::{
    CudaError, CudaSlice, DevicePtr, Digests, Gpu, Island, KernelArg, Probes, ISLAND_PAGE,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::targets::{BufferSpec, ElemKind, HostBuffer, Role};

/// Bytes of guard zone before and after every buffer (a multiple of 256, so
/// the buffer a kernel sees keeps the allocator's alignment).
pub const GUARD_BYTES: usize = 4096;

/// What every guard byte holds; anything else means a kernel wrote there.
pub const GUARD_BYTE: u8 = 0xA5;

/// Most unmapped pages on either side of a buffer's island (at least one):
/// the distance from one island to any other device memory is a secret
/// draw, so a kernel that guesses it most likely faults.
pub const MAX_GAP_PAGES: usize = 128;

/// One buffer between its guard zones, alone in its island.
struct Guarded {
    island: Island,
    /// Bytes the kernel may touch (between the guards).
    len: usize,
}

impl Guarded {
    fn new(gpu: &Gpu, len: usize, placement: &mut ChaCha8Rng) -> Result<Self, CudaError> {
        let before = placement.gen_range(1..=MAX_GAP_PAGES);
        let after = placement.gen_range(1..=MAX_GAP_PAGES);
        let mut island = Island::new(gpu, len + 2 * GUARD_BYTES, before, after)?;
        let all = island.len();
        if all != GUARD_BYTES + len + trailing_guard_bytes(len) {
            return Err(CudaError::SelfCheck(format!(
                "an island for {len} bytes maps {all}, not the whole pages the guards assume"
            )));
        }
        island.fill(gpu, 0, all, 1, GUARD_BYTE as u32)?;
        Ok(Self { island, len })
    }

    fn ptr(&self) -> u64 {
        self.island.ptr() + GUARD_BYTES as u64
    }

    /// Byte offset and length of the trailing guard: to the island's end.
    fn trailing(&self) -> (usize, usize) {
        let at = GUARD_BYTES + self.len;
        (at, self.island.len() - at)
    }

    fn download(&self, gpu: &Gpu) -> Result<Vec<u8>, CudaError> {
        self.island.download(gpu, GUARD_BYTES, self.len)
    }

    fn upload(&mut self, gpu: &Gpu, host: &[u8]) -> Result<(), CudaError> {
        self.island.upload(gpu, GUARD_BYTES, host)
    }

    /// The first guard byte that changed: `(before the buffer?, offset into
    /// the guard)`, to 16 bytes in the trailing guard past its first 16.
    /// The long trailing guard is compared on the device with `pattern`.
    fn damaged(
        &self,
        gpu: &Gpu,
        probes: &Probes,
        pattern: &GuardPattern,
    ) -> Result<Option<(bool, usize)>, CudaError> {
        let front = self.island.download(gpu, 0, GUARD_BYTES)?;
        if let Some(i) = front.iter().position(|&b| b != GUARD_BYTE) {
            return Ok(Some((true, GUARD_BYTES - i)));
        }
        // The trailing guard starts wherever the buffer ends: its bytes up
        // to a 16-byte boundary are read here, the rest (most of a page) is
        // compared on the device.
        let (at, len) = self.trailing();
        let head = (at.next_multiple_of(16) - at).min(len);
        let first = self.island.download(gpu, at, head)?;
        if let Some(i) = first.iter().position(|&b| b != GUARD_BYTE) {
            return Ok(Some((false, i)));
        }
        let rest = len - head;
        if rest > pattern.len {
            return Err(CudaError::SelfCheck(format!(
                "a trailing guard of {rest} bytes is longer than the guard pattern ({})",
                pattern.len
            )));
        }
        let differs = probes.first_difference(
            gpu,
            self.island.ptr() + (at + head) as u64,
            pattern.ptr(gpu),
            rest as u64,
        )?;
        Ok(differs.map(|i| (false, head + i as usize)))
    }

    /// Restores both guard zones (after a damaged one was reported).
    fn reset_guards(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        self.island
            .fill(gpu, 0, GUARD_BYTES, 1, GUARD_BYTE as u32)?;
        let (at, len) = self.trailing();
        self.island.fill(gpu, at, len, 1, GUARD_BYTE as u32)
    }
}

/// The trailing guard of a buffer of `len` bytes: what is left of its
/// island's whole pages after the leading guard and the buffer.
fn trailing_guard_bytes(len: usize) -> usize {
    (len + 2 * GUARD_BYTES).div_ceil(ISLAND_PAGE) * ISLAND_PAGE - GUARD_BYTES - len
}

/// Bytes of [`GuardPattern`]: a trailing guard is shorter than a page plus a
/// guard zone, since an island rounds `len + 2 × GUARD_BYTES` up to whole
/// pages (a test pins it).
const GUARD_PATTERN_BYTES: usize = ISLAND_PAGE + GUARD_BYTES;

/// Device bytes all [`GUARD_BYTE`], as long as the longest trailing guard:
/// what the guards are compared with on the device.
struct GuardPattern {
    buf: CudaSlice<u8>,
    len: usize,
}

impl GuardPattern {
    fn new(gpu: &Gpu) -> Result<Self, CudaError> {
        let len = GUARD_PATTERN_BYTES;
        let mut buf = gpu.alloc_zeros::<u8>(len)?;
        gpu.memset_bytes(&mut buf, GUARD_BYTE)?;
        Ok(Self { buf, len })
    }

    fn ptr(&self, gpu: &Gpu) -> u64 {
        self.buf.device_ptr(gpu.stream()).0
    }
}

/// The sentinel every output is filled with before a launch: NaN for floats
/// (the dtype's own quiet NaN), all ones for integers.
fn poison_word(kind: ElemKind) -> (usize, u32) {
    match kind {
        ElemKind::Dtype(d) if d.size() == 2 => (
            2,
            if d == kiln_kernels::DType::BF16 {
                0x7FC0
            } else {
                0x7E00
            },
        ),
        ElemKind::Dtype(_) | ElemKind::F32 => (4, 0x7FC0_0000),
        ElemKind::U32 | ElemKind::I32 => (4, u32::MAX),
    }
}

/// Bytes from one row window of an input of `bytes` (one window's rows) to
/// the next: 0 when the input is not windowed (static, or a single window).
/// Each window is followed by a guard-sized gap, so what a kernel reads just
/// past its rows looks as it does after a buffer of its own.
fn window_stride_of(bytes: usize, windows: usize, row_shaped: bool) -> usize {
    if windows > 1 && row_shaped && bytes > 0 {
        (bytes + GUARD_BYTES).div_ceil(WINDOW_ALIGN) * WINDOW_ALIGN
    } else {
        0
    }
}

/// Spreads `host` (every window's rows back to back) over `windows` blocks
/// `stride` bytes apart; the gaps between blocks hold the guard pattern.
fn lay_out_windows(host: &[u8], stride: usize, windows: usize) -> Vec<u8> {
    let per_window = host.len() / windows.max(1);
    let mut out = vec![GUARD_BYTE; stride * windows];
    for (w, chunk) in host.chunks(per_window.max(1)).take(windows).enumerate() {
        out[w * stride..w * stride + chunk.len()].copy_from_slice(chunk);
    }
    out
}

/// Elements per row of a buffer of `len` elements over `t` rows (the whole
/// buffer when it is not row-shaped).
pub fn row_len(len: usize, t: usize) -> usize {
    if t > 0 && len > 0 && len.is_multiple_of(t) {
        len / t
    } else {
        len.max(1)
    }
}

/// Bytes between the starts of two row windows of one input: the allocator's
/// alignment, so every launch sees its rows as aligned as a fresh allocation.
const WINDOW_ALIGN: usize = 256;

/// One output group: every written buffer (outputs and in-outs) by
/// parameter position, and which row window of the row-shaped inputs the
/// launch writing it reads.
struct OutputGroup {
    outputs: Vec<Option<Guarded>>,
    window: usize,
}

/// The device buffers of one input set, with one or more output groups.
///
/// A set may hold several *row windows*: each row-shaped input then holds
/// `windows` blocks of `T` rows (each block aligned to [`WINDOW_ALIGN`]) and
/// output group `g` is written by a launch over its own block, with the
/// static inputs (weights) shared. No two launches of a timing graph then
/// compute the same rows, so no launch can copy an earlier launch's answer
/// from another output group instead of computing its own.
pub struct DeviceSet {
    /// Rows (`T`).
    pub t: usize,
    specs: Vec<BufferSpec>,
    /// Input buffers by parameter position (`None` for outputs and empty inputs).
    inputs: Vec<Option<Guarded>>,
    /// Row windows of the row-shaped inputs (1: every group reads the same rows).
    windows: usize,
    /// Bytes from one window of each input to the next (0 for inputs that
    /// are not windowed: static ones, and every input when `windows` is 1).
    window_stride: Vec<usize>,
    /// Output groups.
    groups: Vec<OutputGroup>,
    /// The bytes uploaded into each input (to restore a corrupted input) and
    /// each in-out buffer (what every group's copy is reset to).
    uploaded: Vec<Option<Vec<u8>>>,
    /// A device copy of each input as uploaded: the inputs-unchanged check
    /// compares on the device, so large inputs are never read back. For an
    /// in-out buffer, its start values: every group's copy is reset from it
    /// before every launch on the device (a KV cache per group, uploaded
    /// from the host before every replay, was most of a timing run).
    pristine: Vec<Option<CudaSlice<u8>>>,
    /// `int` arguments passed after `T` (decode_attention's `past`).
    scalars: Vec<i32>,
    /// Where the islands go: seeded from the operating system, never told
    /// to a kernel.
    placement: ChaCha8Rng,
    /// What the guards are compared against.
    guard_pattern: GuardPattern,
}

impl DeviceSet {
    /// Allocates every buffer with one output group (a zero-length buffer stays null).
    pub fn new(gpu: &Gpu, specs: Vec<BufferSpec>, t: usize) -> Result<Self, CudaError> {
        Self::windowed(gpu, specs, t, &[], 1)
    }

    /// Like [`DeviceSet::new`], but each input marked in `row_shaped` (by
    /// parameter position) holds `windows` blocks of `T` rows, and up to
    /// `windows` output groups each read their own block.
    pub fn windowed(
        gpu: &Gpu,
        specs: Vec<BufferSpec>,
        t: usize,
        row_shaped: &[bool],
        windows: usize,
    ) -> Result<Self, CudaError> {
        let windows = windows.max(1);
        let mut placement = ChaCha8Rng::seed_from_u64(rand::random());
        let mut inputs = Vec::with_capacity(specs.len());
        let mut window_stride = Vec::with_capacity(specs.len());
        for (i, s) in specs.iter().enumerate() {
            let bytes = s.len * s.kind.size();
            let stride =
                window_stride_of(bytes, windows, row_shaped.get(i).copied().unwrap_or(false));
            window_stride.push(stride);
            inputs.push(if bytes == 0 || s.role != Role::Input {
                None
            } else if stride > 0 {
                Some(Guarded::new(gpu, stride * windows, &mut placement)?)
            } else {
                Some(Guarded::new(gpu, bytes, &mut placement)?)
            });
        }
        let uploaded = vec![None; specs.len()];
        let pristine = (0..specs.len()).map(|_| None).collect();
        let mut set = Self {
            t,
            specs,
            inputs,
            windows,
            window_stride,
            groups: Vec::new(),
            uploaded,
            pristine,
            scalars: Vec::new(),
            placement,
            guard_pattern: GuardPattern::new(gpu)?,
        };
        set.add_output_group(gpu)?;
        Ok(set)
    }

    /// Adds another output group, over the next row window when the set has
    /// one left (over the same rows otherwise); returns its index. Its in-out
    /// buffers start from the values last uploaded.
    pub fn add_output_group(&mut self, gpu: &Gpu) -> Result<usize, CudaError> {
        let mut outputs = Vec::with_capacity(self.specs.len());
        for (s, uploaded) in self.specs.iter().zip(&self.uploaded) {
            let bytes = s.len * s.kind.size();
            outputs.push(if bytes == 0 || !s.role.is_written() {
                None
            } else {
                let mut buf = Guarded::new(gpu, bytes, &mut self.placement)?;
                if let (Role::InOut, Some(host)) = (s.role, uploaded) {
                    buf.upload(gpu, host)?;
                }
                Some(buf)
            });
        }
        let window = self.groups.len() % self.windows;
        self.groups.push(OutputGroup { outputs, window });
        Ok(self.groups.len() - 1)
    }

    /// Puts the output groups in a random order (which pass of a graph
    /// writes which allocation, over which row window).
    pub fn shuffle_groups(&mut self, rng: &mut impl rand::Rng) {
        use rand::seq::SliceRandom;
        self.groups.shuffle(rng);
    }

    /// The row window output group `group` is computed from: its rows are
    /// rows `window × T ..` of the set's host inputs.
    pub fn window_of(&self, group: usize) -> usize {
        self.groups.get(group).map_or(0, |g| g.window)
    }

    /// Output groups in this set.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Sets the `int` arguments that follow `T` (the op's run-time scalars).
    pub fn with_scalars(mut self, scalars: Vec<i32>) -> Self {
        self.set_scalars(scalars);
        self
    }

    /// Replaces the `int` arguments that follow `T` (a verification trial's own).
    pub fn set_scalars(&mut self, scalars: Vec<i32>) {
        self.scalars = scalars;
    }

    /// Bytes one launch touches: every input and one output group.
    pub fn bytes(&self) -> u64 {
        self.specs
            .iter()
            .map(|s| (s.len * s.kind.size()) as u64)
            .sum()
    }

    /// Copies fresh inputs into the same device buffers (same pointers as the
    /// last trial, so a kernel that caches results by pointer is caught), and
    /// the in-out buffers' starting values into every group's copy. A
    /// windowed input's host buffer holds every window's rows, in order.
    pub fn upload_inputs(&mut self, gpu: &Gpu, inputs: &[HostBuffer]) -> Result<(), CudaError> {
        let mut next = inputs.iter();
        for (i, spec) in self.specs.iter().enumerate() {
            if !spec.role.is_read() {
                continue;
            }
            let host = next.next().map(HostBuffer::to_bytes).unwrap_or_default();
            if spec.role == Role::InOut {
                for buf in self.groups.iter_mut().filter_map(|g| g.outputs[i].as_mut()) {
                    buf.upload(gpu, &host)?;
                }
                self.pristine[i] = if host.is_empty() {
                    None
                } else {
                    Some(gpu.upload(&host)?)
                };
                self.uploaded[i] = Some(host);
                continue;
            }
            let host = match self.window_stride[i] {
                0 => host,
                stride => {
                    let expected = spec.len * spec.kind.size() * self.windows;
                    if host.len() != expected {
                        return Err(CudaError::SelfCheck(format!(
                            "input `{}` has {} bytes for {} row windows of {} bytes",
                            spec.name,
                            host.len(),
                            self.windows,
                            spec.len * spec.kind.size()
                        )));
                    }
                    lay_out_windows(&host, stride, self.windows)
                }
            };
            if let Some(buf) = self.inputs[i].as_mut() {
                buf.upload(gpu, &host)?;
                if host.len() == buf.len {
                    self.pristine[i] = Some(gpu.upload(&host)?);
                }
            }
            self.uploaded[i] = Some(host);
        }
        Ok(())
    }

    /// Device address and length of every input buffer (every row window):
    /// what the judge reads into L2 before a replay.
    pub fn input_ranges(&self) -> Vec<(u64, u64)> {
        self.inputs
            .iter()
            .flatten()
            .map(|b| (b.ptr(), b.len as u64))
            .collect()
    }

    /// Re-uploads the inputs last uploaded (after a kernel corrupted them).
    pub fn restore_inputs(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        for (buf, host) in self.inputs.iter_mut().zip(&self.uploaded) {
            if let (Some(buf), Some(host)) = (buf.as_mut(), host) {
                buf.upload(gpu, host)?;
                buf.reset_guards(gpu)?;
            }
        }
        for g in self
            .groups
            .iter_mut()
            .flat_map(|g| g.outputs.iter_mut())
            .flatten()
        {
            g.reset_guards(gpu)?;
        }
        Ok(())
    }

    /// Readies every group for a launch: fills every output with its
    /// sentinel and resets every in-out buffer to the values last uploaded
    /// (copied on the device from their pristine copy).
    pub fn reset_outputs(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        for group in self.groups.iter_mut() {
            for (((spec, buf), uploaded), pristine) in self
                .specs
                .iter()
                .zip(group.outputs.iter_mut())
                .zip(&self.uploaded)
                .zip(&self.pristine)
            {
                let Some(buf) = buf else { continue };
                match (spec.role, uploaded) {
                    (Role::InOut, Some(host)) => match pristine {
                        Some(start) => {
                            let len = host.len().min(start.len());
                            // SAFETY: the pristine copy holds `len` bytes and
                            // lives as long as the set.
                            unsafe {
                                buf.island.copy_from(
                                    gpu,
                                    start.device_ptr(gpu.stream()).0,
                                    GUARD_BYTES,
                                    len,
                                )?
                            }
                        }
                        None => buf.upload(gpu, host)?,
                    },
                    (Role::InOut, None) => {
                        return Err(CudaError::SelfCheck(format!(
                            "in-out buffer `{}` reset before any values were uploaded",
                            spec.name
                        )))
                    }
                    _ => {
                        let (word, pattern) = poison_word(spec.kind);
                        let len = buf.len;
                        buf.island.fill(gpu, GUARD_BYTES, len, word, pattern)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The launch arguments writing into output group `group`: every
    /// buffer's pointer (0 for null; a windowed input's at the group's
    /// window), `int T`, then the op's run-time scalars.
    pub fn args(&self, group: usize) -> Vec<KernelArg> {
        let group = &self.groups[group.min(self.groups.len() - 1)];
        let mut args: Vec<KernelArg> = self
            .inputs
            .iter()
            .zip(&group.outputs)
            .zip(&self.window_stride)
            .map(|((i, o), stride)| match (i, o) {
                (Some(b), _) => KernelArg::Ptr(b.ptr() + (stride * group.window) as u64),
                (None, Some(b)) => KernelArg::Ptr(b.ptr()),
                (None, None) => KernelArg::Ptr(0),
            })
            .collect();
        args.push(KernelArg::I32(self.t as i32));
        args.extend(self.scalars.iter().map(|&v| KernelArg::I32(v)));
        args
    }

    /// Reads back every written buffer (outputs and in-outs) of `group`.
    pub fn download_outputs(&self, gpu: &Gpu, group: usize) -> Result<Vec<HostBuffer>, CudaError> {
        let mut out = Vec::new();
        for (spec, buf) in self.specs.iter().zip(&self.groups[group].outputs) {
            if !spec.role.is_written() {
                continue;
            }
            let bytes = match buf {
                Some(b) => b.download(gpu)?,
                None => Vec::new(),
            };
            out.push(HostBuffer::from_bytes(spec.kind, &bytes));
        }
        Ok(out)
    }

    /// Reads back only `rows` (each of `row_len(output)` elements) of every
    /// output of `group`, concatenated in the order given: checking a sample
    /// of a large output costs a few small copies, not the whole buffer.
    pub fn download_output_rows(
        &self,
        gpu: &Gpu,
        group: usize,
        rows: &[usize],
    ) -> Result<Vec<HostBuffer>, CudaError> {
        let mut out = Vec::new();
        for (spec, buf) in self.specs.iter().zip(&self.groups[group].outputs) {
            if !spec.role.is_written() {
                continue;
            }
            let mut bytes = Vec::new();
            if let Some(b) = buf {
                let row_bytes = row_len(spec.len, self.t) * spec.kind.size();
                for &r in rows {
                    let start = r * row_bytes;
                    if start + row_bytes <= b.len {
                        bytes.extend(b.island.download(gpu, GUARD_BYTES + start, row_bytes)?);
                    }
                }
            }
            out.push(HostBuffer::from_bytes(spec.kind, &bytes));
        }
        Ok(out)
    }

    /// How many written buffers (outputs and in-out buffers) the output
    /// groups hold together: one digest slot each.
    pub fn written_buffers(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.outputs.iter().flatten().count())
            .sum()
    }

    /// Written buffers per output group (every group has the same).
    pub fn written_per_group(&self) -> usize {
        self.groups
            .first()
            .map_or(0, |g| g.outputs.iter().flatten().count())
    }

    /// Enqueues the digest of every group's written buffers into `digests`,
    /// one slot each from `first` on (by group, then parameter position);
    /// returns the next free slot. No copy of the outputs is kept: a device
    /// copy of a checked replay's answers would be right answers to the same
    /// inputs, waiting in memory for a later launch to find.
    pub fn digest_outputs(
        &self,
        gpu: &Gpu,
        probes: &Probes,
        digests: &mut Digests,
        first: usize,
    ) -> Result<usize, CudaError> {
        let mut slot = first;
        for out in self.groups.iter().flat_map(|g| g.outputs.iter().flatten()) {
            probes.digest(gpu, out.ptr(), out.len as u64, digests, slot)?;
            slot += 1;
        }
        Ok(slot)
    }

    /// The first input whose device bytes differ from what was uploaded:
    /// `(name, first differing byte, to 16-byte granularity)`.
    pub fn mutated_input(
        &self,
        gpu: &Gpu,
        probes: &Probes,
    ) -> Result<Option<(String, usize)>, CudaError> {
        for (i, spec) in self.specs.iter().enumerate() {
            let (Some(buf), Some(before)) = (&self.inputs[i], &self.uploaded[i]) else {
                continue;
            };
            let at = match &self.pristine[i] {
                Some(copy) => probes
                    .first_difference(
                        gpu,
                        buf.ptr(),
                        copy.device_ptr(gpu.stream()).0,
                        buf.len as u64,
                    )?
                    .map(|b| b as usize),
                None => {
                    let after = buf.download(gpu)?;
                    before.iter().zip(&after).position(|(a, b)| a != b)
                }
            };
            if let Some(pos) = at {
                return Ok(Some((spec.name.clone(), pos)));
            }
        }
        Ok(None)
    }

    /// The first buffer whose guard zone was written, as a sentence.
    pub fn damaged_guard(&self, gpu: &Gpu, probes: &Probes) -> Result<Option<String>, CudaError> {
        let all = self.inputs.iter().enumerate().chain(
            self.groups
                .iter()
                .flat_map(|g| g.outputs.iter().enumerate()),
        );
        for (i, buf) in all {
            if let Some(buf) = buf {
                if let Some((before, offset)) = buf.damaged(gpu, probes, &self.guard_pattern)? {
                    let name = &self.specs[i].name;
                    return Ok(Some(if before {
                        format!("the kernel wrote {offset} bytes before the start of `{name}`")
                    } else {
                        format!(
                            "the kernel wrote past the end of `{name}` (byte {offset} after its last byte)"
                        )
                    }));
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_trailing_guard_is_a_guard_long_and_fits_the_pattern() {
        for len in (0..20_000)
            .chain([
                ISLAND_PAGE - 2 * GUARD_BYTES - 1,
                ISLAND_PAGE - 2 * GUARD_BYTES,
            ])
            .chain([
                ISLAND_PAGE - 2 * GUARD_BYTES + 1,
                3 * ISLAND_PAGE,
                400 << 20,
            ])
        {
            let trailing = trailing_guard_bytes(len);
            assert!(trailing >= GUARD_BYTES, "len {len}: {trailing}");
            // The device compare covers it after at most 15 bytes on the host.
            assert!(trailing < GUARD_PATTERN_BYTES, "len {len}: {trailing}");
            assert_eq!((GUARD_BYTES + len + trailing) % ISLAND_PAGE, 0, "len {len}");
        }
    }

    #[test]
    fn windows_start_aligned_and_hold_their_rows_in_order() {
        // 3 windows of 10 bytes each: each followed by at least a guard's
        // worth of the guard pattern, and 256-aligned.
        assert_eq!(window_stride_of(10, 3, true), 4352);
        assert_eq!(window_stride_of(512, 3, true), 4608);
        assert_eq!(window_stride_of(10, 1, true), 0, "one window: not windowed");
        assert_eq!(
            window_stride_of(10, 3, false),
            0,
            "static inputs are shared"
        );
        let host: Vec<u8> = (1..=30).collect();
        let stride = window_stride_of(10, 3, true);
        let laid = lay_out_windows(&host, stride, 3);
        assert_eq!(laid.len(), 3 * stride);
        for w in 0..3 {
            let block = &laid[w * stride..w * stride + 10];
            assert_eq!(block, &host[w * 10..(w + 1) * 10], "window {w}");
            let gap = &laid[w * stride + 10..(w + 1) * stride];
            assert!(gap.len() >= GUARD_BYTES && gap.iter().all(|&b| b == GUARD_BYTE));
        }
    }
}
