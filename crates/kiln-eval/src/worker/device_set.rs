//! One input set's device buffers, type-erased: the kernel's pointer
//! parameters in signature order, uploaded, poisoned, guarded and read back
//! as raw bytes.
//!
//! Every buffer sits between two guard zones filled with [`GUARD_BYTE`]; a
//! kernel that writes past either end of any buffer (an output's or an
//! input's) is caught by [`DeviceSet::damaged_guard`]. A set may hold several
//! *output groups* over the same inputs: in a timing graph every launch
//! writes its own outputs, all poisoned before the graph runs, so no launch
//! ever finds an earlier launch's answer where it writes.

use kiln_cuda::{CudaError, CudaSlice, DevicePtr, Gpu, KernelArg, Probes};

use crate::targets::{BufferSpec, ElemKind, HostBuffer, Role};

/// Bytes of guard zone before and after every buffer (a multiple of 256, so
/// the buffer a kernel sees keeps the allocator's alignment).
pub const GUARD_BYTES: usize = 4096;

/// What every guard byte holds; anything else means a kernel wrote there.
pub const GUARD_BYTE: u8 = 0xA5;

/// One buffer between its guard zones.
struct Guarded {
    buf: CudaSlice<u8>,
    /// Bytes the kernel may touch (between the guards).
    len: usize,
}

impl Guarded {
    fn new(gpu: &Gpu, len: usize) -> Result<Self, CudaError> {
        let mut buf = gpu.alloc_zeros::<u8>(len + 2 * GUARD_BYTES)?;
        gpu.memset_bytes(&mut buf, GUARD_BYTE)?;
        Ok(Self { buf, len })
    }

    fn ptr(&self, gpu: &Gpu) -> u64 {
        self.buf.device_ptr(gpu.stream()).0 + GUARD_BYTES as u64
    }

    fn download(&self, gpu: &Gpu) -> Result<Vec<u8>, CudaError> {
        gpu.download_range(&self.buf, GUARD_BYTES, self.len)
    }

    /// The first guard byte that changed: `(before the buffer?, offset into the guard)`.
    fn damaged(&self, gpu: &Gpu) -> Result<Option<(bool, usize)>, CudaError> {
        let front = gpu.download_range(&self.buf, 0, GUARD_BYTES)?;
        if let Some(i) = front.iter().position(|&b| b != GUARD_BYTE) {
            return Ok(Some((true, GUARD_BYTES - i)));
        }
        let back = gpu.download_range(&self.buf, GUARD_BYTES + self.len, GUARD_BYTES)?;
        Ok(back
            .iter()
            .position(|&b| b != GUARD_BYTE)
            .map(|i| (false, i)))
    }

    /// Restores both guard zones (after a damaged one was reported).
    fn reset_guards(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        gpu.fill_words_range(&mut self.buf, 0, GUARD_BYTES, 1, GUARD_BYTE as u32)?;
        gpu.fill_words_range(
            &mut self.buf,
            GUARD_BYTES + self.len,
            GUARD_BYTES,
            1,
            GUARD_BYTE as u32,
        )
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

/// Elements per row of a buffer of `len` elements over `t` rows (the whole
/// buffer when it is not row-shaped).
pub fn row_len(len: usize, t: usize) -> usize {
    if t > 0 && len > 0 && len.is_multiple_of(t) {
        len / t
    } else {
        len.max(1)
    }
}

/// The device buffers of one input set, with one or more output groups.
pub struct DeviceSet {
    /// Rows (`T`).
    pub t: usize,
    specs: Vec<BufferSpec>,
    /// Input buffers by parameter position (`None` for outputs and empty inputs).
    inputs: Vec<Option<Guarded>>,
    /// Output groups; each holds every output by parameter position.
    groups: Vec<Vec<Option<Guarded>>>,
    /// The bytes uploaded into each input (to restore a corrupted input).
    uploaded: Vec<Option<Vec<u8>>>,
    /// A device copy of each input as uploaded: the inputs-unchanged check
    /// compares on the device, so large inputs are never read back.
    pristine: Vec<Option<CudaSlice<u8>>>,
    /// `int` arguments passed after `T` (decode_attention's `past`).
    scalars: Vec<i32>,
}

impl DeviceSet {
    /// Allocates every buffer with one output group (a zero-length buffer stays null).
    pub fn new(gpu: &Gpu, specs: Vec<BufferSpec>, t: usize) -> Result<Self, CudaError> {
        let mut inputs = Vec::with_capacity(specs.len());
        for s in &specs {
            let bytes = s.len * s.kind.size();
            inputs.push(if bytes == 0 || s.role != Role::Input {
                None
            } else {
                Some(Guarded::new(gpu, bytes)?)
            });
        }
        let uploaded = vec![None; specs.len()];
        let pristine = (0..specs.len()).map(|_| None).collect();
        let mut set = Self {
            t,
            specs,
            inputs,
            groups: Vec::new(),
            uploaded,
            pristine,
            scalars: Vec::new(),
        };
        set.add_output_group(gpu)?;
        Ok(set)
    }

    /// Adds another output group over the same inputs; returns its index.
    pub fn add_output_group(&mut self, gpu: &Gpu) -> Result<usize, CudaError> {
        let mut group = Vec::with_capacity(self.specs.len());
        for s in &self.specs {
            let bytes = s.len * s.kind.size();
            group.push(if bytes == 0 || s.role != Role::Output {
                None
            } else {
                Some(Guarded::new(gpu, bytes)?)
            });
        }
        self.groups.push(group);
        Ok(self.groups.len() - 1)
    }

    /// Puts the output groups in a random order (which pass of a graph
    /// writes which allocation).
    pub fn shuffle_groups(&mut self, rng: &mut impl rand::Rng) {
        use rand::seq::SliceRandom;
        self.groups.shuffle(rng);
    }

    /// Output groups in this set.
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Sets the `int` arguments that follow `T` (the op's run-time scalars).
    pub fn with_scalars(mut self, scalars: Vec<i32>) -> Self {
        self.scalars = scalars;
        self
    }

    /// Bytes one launch touches: every input and one output group.
    pub fn bytes(&self) -> u64 {
        self.specs
            .iter()
            .map(|s| (s.len * s.kind.size()) as u64)
            .sum()
    }

    /// Copies fresh inputs into the same device buffers (same pointers as the
    /// last trial, so a kernel that caches results by pointer is caught).
    pub fn upload_inputs(&mut self, gpu: &Gpu, inputs: &[HostBuffer]) -> Result<(), CudaError> {
        let mut next = inputs.iter();
        for (i, spec) in self.specs.iter().enumerate() {
            if spec.role != Role::Input {
                continue;
            }
            let host = next.next().map(HostBuffer::to_bytes).unwrap_or_default();
            if let Some(buf) = self.inputs[i].as_mut() {
                gpu.upload_range(&host, &mut buf.buf, GUARD_BYTES)?;
                if host.len() == buf.len {
                    self.pristine[i] = Some(gpu.upload(&host)?);
                }
            }
            self.uploaded[i] = Some(host);
        }
        Ok(())
    }

    /// Re-uploads the inputs last uploaded (after a kernel corrupted them).
    pub fn restore_inputs(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        for (buf, host) in self.inputs.iter_mut().zip(&self.uploaded) {
            if let (Some(buf), Some(host)) = (buf.as_mut(), host) {
                gpu.upload_range(host, &mut buf.buf, GUARD_BYTES)?;
                buf.reset_guards(gpu)?;
            }
        }
        for g in self.groups.iter_mut().flatten().flatten() {
            g.reset_guards(gpu)?;
        }
        Ok(())
    }

    /// Fills every output of every group with its sentinel.
    pub fn poison_outputs(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        for group in self.groups.iter_mut() {
            for (spec, buf) in self.specs.iter().zip(group.iter_mut()) {
                if let Some(buf) = buf {
                    let (word, pattern) = poison_word(spec.kind);
                    let len = buf.len;
                    gpu.fill_words_range(&mut buf.buf, GUARD_BYTES, len, word, pattern)?;
                }
            }
        }
        Ok(())
    }

    /// The launch arguments writing into output group `group`: every
    /// buffer's pointer (0 for null), `int T`, then the op's run-time scalars.
    pub fn args(&self, gpu: &Gpu, group: usize) -> Vec<KernelArg> {
        let outputs = &self.groups[group.min(self.groups.len() - 1)];
        let mut args: Vec<KernelArg> = self
            .inputs
            .iter()
            .zip(outputs)
            .map(|(i, o)| match i.as_ref().or(o.as_ref()) {
                Some(b) => KernelArg::Ptr(b.ptr(gpu)),
                None => KernelArg::Ptr(0),
            })
            .collect();
        args.push(KernelArg::I32(self.t as i32));
        args.extend(self.scalars.iter().map(|&v| KernelArg::I32(v)));
        args
    }

    /// Reads back every output of `group`.
    pub fn download_outputs(&self, gpu: &Gpu, group: usize) -> Result<Vec<HostBuffer>, CudaError> {
        let mut out = Vec::new();
        for (spec, buf) in self.specs.iter().zip(&self.groups[group]) {
            if spec.role != Role::Output {
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
        for (spec, buf) in self.specs.iter().zip(&self.groups[group]) {
            if spec.role != Role::Output {
                continue;
            }
            let mut bytes = Vec::new();
            if let Some(b) = buf {
                let row_bytes = row_len(spec.len, self.t) * spec.kind.size();
                for &r in rows {
                    let start = r * row_bytes;
                    if start + row_bytes <= b.len {
                        bytes.extend(gpu.download_range(&b.buf, GUARD_BYTES + start, row_bytes)?);
                    }
                }
            }
            out.push(HostBuffer::from_bytes(spec.kind, &bytes));
        }
        Ok(out)
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
                        buf.ptr(gpu),
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
    pub fn damaged_guard(&self, gpu: &Gpu) -> Result<Option<String>, CudaError> {
        let all = self
            .inputs
            .iter()
            .enumerate()
            .chain(self.groups.iter().flat_map(|g| g.iter().enumerate()));
        for (i, buf) in all {
            if let Some(buf) = buf {
                if let Some((before, offset)) = buf.damaged(gpu)? {
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
