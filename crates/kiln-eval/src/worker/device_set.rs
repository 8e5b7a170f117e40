//! One shape's device buffers, type-erased: the kernel's pointer parameters in
//! signature order, uploaded, poisoned and read back as raw bytes.

use kiln_cuda::{CudaError, CudaSlice, DevicePtr, Gpu, KernelArg};

use crate::targets::{BufferSpec, ElemKind, HostBuffer, Role};

/// The device buffers of one input set.
pub struct DeviceSet {
    /// Rows (`T`).
    pub t: usize,
    specs: Vec<BufferSpec>,
    bufs: Vec<Option<CudaSlice<u8>>>,
    /// The bytes uploaded into each input (for the inputs-unchanged check).
    uploaded: Vec<Option<Vec<u8>>>,
    /// `int` arguments passed after `T` (decode_attention's `past`).
    scalars: Vec<i32>,
}

impl DeviceSet {
    /// Allocates every buffer (a zero-length one stays null).
    pub fn new(gpu: &Gpu, specs: Vec<BufferSpec>, t: usize) -> Result<Self, CudaError> {
        let mut bufs = Vec::with_capacity(specs.len());
        for s in &specs {
            let bytes = s.len * s.kind.size();
            bufs.push(if bytes == 0 {
                None
            } else {
                Some(gpu.alloc_zeros::<u8>(bytes)?)
            });
        }
        let uploaded = vec![None; specs.len()];
        Ok(Self {
            t,
            specs,
            bufs,
            uploaded,
            scalars: Vec::new(),
        })
    }

    /// Sets the `int` arguments that follow `T` (the op's run-time scalars).
    pub fn with_scalars(mut self, scalars: Vec<i32>) -> Self {
        self.scalars = scalars;
        self
    }

    /// Total bytes of every buffer.
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
            if let Some(buf) = self.bufs[i].as_mut() {
                gpu.stream()
                    .memcpy_htod(&host, buf)
                    .map_err(CudaError::driver("cuMemcpyHtoD"))?;
            }
            self.uploaded[i] = Some(host);
        }
        Ok(())
    }

    /// Fills every output with its sentinel: NaN for floats, all ones for integers.
    pub fn poison_outputs(&mut self, gpu: &Gpu) -> Result<(), CudaError> {
        for (spec, buf) in self.specs.iter().zip(self.bufs.iter_mut()) {
            if spec.role != Role::Output {
                continue;
            }
            if let Some(buf) = buf {
                let (word, pattern) = match spec.kind {
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
                };
                gpu.fill_words(buf, word, pattern)?;
            }
        }
        Ok(())
    }

    /// The launch arguments: every buffer's pointer (0 for null), `int T`,
    /// then the op's run-time scalars.
    pub fn args(&self, gpu: &Gpu) -> Vec<KernelArg> {
        let mut args: Vec<KernelArg> = self
            .bufs
            .iter()
            .map(|b| match b {
                Some(b) => KernelArg::Ptr(b.device_ptr(gpu.stream()).0),
                None => KernelArg::Ptr(0),
            })
            .collect();
        args.push(KernelArg::I32(self.t as i32));
        args.extend(self.scalars.iter().map(|&v| KernelArg::I32(v)));
        args
    }

    /// Reads every output back.
    pub fn download_outputs(&self, gpu: &Gpu) -> Result<Vec<HostBuffer>, CudaError> {
        let mut out = Vec::new();
        for (spec, buf) in self.specs.iter().zip(&self.bufs) {
            if spec.role != Role::Output {
                continue;
            }
            let bytes = match buf {
                Some(b) => gpu.download(b)?,
                None => Vec::new(),
            };
            out.push(HostBuffer::from_bytes(spec.kind, &bytes));
        }
        Ok(out)
    }

    /// The first input whose device bytes differ from what was uploaded:
    /// `(name, first differing byte)`.
    pub fn mutated_input(&self, gpu: &Gpu) -> Result<Option<(String, usize)>, CudaError> {
        for (i, spec) in self.specs.iter().enumerate() {
            if spec.role != Role::Input {
                continue;
            }
            if let (Some(buf), Some(before)) = (&self.bufs[i], &self.uploaded[i]) {
                let after = gpu.download(buf)?;
                if let Some(pos) = before.iter().zip(&after).position(|(a, b)| a != b) {
                    return Ok(Some((spec.name.clone(), pos)));
                }
            }
        }
        Ok(None)
    }
}
