//! The f32 convolution of [`super::conv2d`] on gfer's packed matrix kernel
//! ([`super::matmul`]), on the machines where that kernel runs. The image patches
//! (im2col) are written straight into the kernel's 16-column panels, so no product
//! repacks them, and each convolution's weight is packed once for the whole batch.
//!
//! - forward, per image: `out[cout, p] = weight[cout, k] · patches[k, p]`, the panels'
//!   columns being output pixels;
//! - input gradient: `dpatches[k, p] = weightᵀ[k, cout] · grad[cout, p]`, then col2im;
//! - weight gradient: `grad_weight[cout, k] += grad[cout, p] · patchesᵀ[p, k]`, the panels'
//!   columns being patch rows `k`.
//!
//! The panels are written inside the image only: what falls on the padding is the same
//! for every image of a batch, so it stays at the zero the panels start from.
//!
//! Each returns `None` where the kernel does not run; the caller then takes the generic
//! path (`gemm` crate), which the f64 replay of the parity tests takes too.

use super::conv::{Conv, Geometry};
use super::matmul::{product_into, OutputStart, PackedRows, PackedWeight, PANEL};

impl Conv {
    pub(super) fn forward_on_panels(
        &self,
        g: &Geometry,
        x: &[f32],
        weight: &[f32],
    ) -> Option<Vec<f32>> {
        let (k, p) = (g.k(), g.p());
        let mut patches = PackedWeight::empty_panels(p, k)?;
        let weight = PackedRows::new(weight, g.cout, k);
        let mut out = vec![0.0f32; g.n * g.cout * p];
        for (image, out) in x.chunks(g.cin * g.h * g.w).zip(out.chunks_mut(g.cout * p)) {
            if self.is_pointwise(g) {
                patches.pack_transposed(image);
            } else {
                patches.fill_panels(|index, panel| self.pixel_panel(g, image, index, panel));
            }
            product_into(&weight, &patches, OutputStart::Zero, out);
        }
        Some(out)
    }

    pub(super) fn input_grad_on_panels(
        &self,
        g: &Geometry,
        grad: &[f32],
        weight: &[f32],
    ) -> Option<Vec<f32>> {
        let (k, p) = (g.k(), g.p());
        let mut grads = PackedWeight::empty_panels(p, g.cout)?;
        let transposed: Vec<f32> = (0..k)
            .flat_map(|kk| (0..g.cout).map(move |c| weight[c * k + kk]))
            .collect();
        let weight = PackedRows::new(&transposed, k, g.cout);
        let pointwise = self.is_pointwise(g);
        let mut patches = vec![0.0f32; if pointwise { 0 } else { k * p }];
        let mut grad_x = vec![0.0f32; g.n * g.cin * g.h * g.w];
        for (grad_out, grad_image) in grad
            .chunks(g.cout * p)
            .zip(grad_x.chunks_mut(g.cin * g.h * g.w))
        {
            grads.pack_transposed(grad_out);
            if pointwise {
                product_into(&weight, &grads, OutputStart::Zero, grad_image);
            } else {
                product_into(&weight, &grads, OutputStart::Zero, &mut patches);
                self.col2im(g, &patches, grad_image);
            }
        }
        Some(grad_x)
    }

    pub(super) fn weight_grad_on_panels(
        &self,
        g: &Geometry,
        x: &[f32],
        grad: &[f32],
    ) -> Option<Vec<f32>> {
        let (k, p) = (g.k(), g.p());
        let mut patches = PackedWeight::empty_panels(k, p)?;
        let mut grad_w = vec![0.0f32; g.cout * k];
        for (i, (image, grad_out)) in x
            .chunks(g.cin * g.h * g.w)
            .zip(grad.chunks(g.cout * p))
            .enumerate()
        {
            if self.is_pointwise(g) {
                patches.pack(image);
            } else {
                patches.fill_panels(|index, panel| self.patch_row_panel(g, image, index, panel));
            }
            let start = if i == 0 {
                OutputStart::Zero
            } else {
                OutputStart::Output
            };
            product_into(
                &PackedRows::new(grad_out, g.cout, p),
                &patches,
                start,
                &mut grad_w,
            );
        }
        Some(grad_w)
    }

    /// Panel `index` of the patch matrix `[k, p]` with pixels as columns: entry `(kk, c)` is
    /// im2col's `col[kk][16 index + c]` (see [`Conv::im2col`]).
    fn pixel_panel(&self, g: &Geometry, image: &[f32], index: usize, panel: &mut [f32]) {
        let first = index * PANEL;
        let pixels = PANEL.min(g.p() - first);
        // The panel's pixels as runs along output rows: (first column, length, oy, first ox).
        let mut runs = [(0, 0, 0, 0); PANEL];
        let (mut count, mut c) = (0, 0);
        while c < pixels {
            let (oy, ox) = ((first + c) / g.wo, (first + c) % g.wo);
            let len = (g.wo - ox).min(pixels - c);
            runs[count] = (c, len, oy, ox);
            count += 1;
            c += len;
        }
        for (kk, slots) in panel.chunks_exact_mut(PANEL).enumerate() {
            let (ci, ky, kx) = (kk / (g.kh * g.kw), (kk / g.kw) % g.kh, kk % g.kw);
            let plane = &image[ci * g.h * g.w..(ci + 1) * g.h * g.w];
            let inside = self.inside(kx, g.w, g.wo);
            for &(c, len, oy, ox) in &runs[..count] {
                let columns = ox.max(inside.start)..(ox + len).min(inside.end);
                if columns.is_empty() {
                    continue;
                }
                if let Some(iy) = self.source(oy, ky, g.h) {
                    let row = &plane[iy * g.w..(iy + 1) * g.w];
                    self.gather(
                        row,
                        columns.clone(),
                        kx,
                        &mut slots[c + columns.start - ox..],
                    );
                }
            }
        }
    }

    /// Panel `index` of the transposed patch matrix `[p, k]` with patch rows as columns:
    /// entry `(pixel, c)` is im2col's `col[16 index + c][pixel]`.
    fn patch_row_panel(&self, g: &Geometry, image: &[f32], index: usize, panel: &mut [f32]) {
        let first = index * PANEL;
        for c in 0..PANEL.min(g.k() - first) {
            let kk = first + c;
            let (ci, ky, kx) = (kk / (g.kh * g.kw), (kk / g.kw) % g.kh, kk % g.kw);
            let plane = &image[ci * g.h * g.w..(ci + 1) * g.h * g.w];
            let inside = self.inside(kx, g.w, g.wo);
            if inside.is_empty() {
                continue;
            }
            for oy in 0..g.ho {
                if let Some(iy) = self.source(oy, ky, g.h) {
                    let row = &plane[iy * g.w..(iy + 1) * g.w];
                    let slots = panel[(oy * g.wo + inside.start) * PANEL + c..].iter_mut();
                    for (ox, slot) in inside.clone().zip(slots.step_by(PANEL)) {
                        *slot = row[ox * self.stride + kx - self.padding];
                    }
                }
            }
        }
    }

    /// The input row or column that output position `o` reads at kernel offset `k`, if it
    /// lies inside the image's `side`.
    fn source(&self, o: usize, k: usize, side: usize) -> Option<usize> {
        (o * self.stride + k)
            .checked_sub(self.padding)
            .filter(|&i| i < side)
    }

    /// The output positions (of `out_side`) whose source at kernel offset `k` lies inside
    /// the image's `side`.
    fn inside(&self, k: usize, side: usize, out_side: usize) -> std::ops::Range<usize> {
        let s = self.stride;
        let start = self.padding.saturating_sub(k).div_ceil(s);
        let end = (side + self.padding)
            .saturating_sub(k)
            .div_ceil(s)
            .min(out_side);
        start..end.max(start)
    }

    /// `slots[j] = row[ox * stride + k - padding]` for the output columns `ox` in `columns`.
    fn gather(&self, row: &[f32], columns: std::ops::Range<usize>, k: usize, slots: &mut [f32]) {
        let from = columns.start * self.stride + k - self.padding;
        let slots = &mut slots[..columns.len()];
        if self.stride == 1 {
            slots.copy_from_slice(&row[from..from + columns.len()]);
        } else {
            for (slot, &value) in slots
                .iter_mut()
                .zip(row[from..].iter().step_by(self.stride))
            {
                *slot = value;
            }
        }
    }
}
