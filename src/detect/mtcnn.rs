//! MTCNN (Zhang et al., "Joint Face Detection and Alignment using Multi-task Cascaded
//! Convolutional Networks", 2016) as facenet-pytorch 2.6.0 runs it
//! (`facenet_pytorch/models/mtcnn.py`, `models/utils/detect_face.py`), with its weights:
//!
//! 1. P-Net, fully convolutional, on every level of an image pyramid (the image shrunk by
//!    `factor` per level from `12 / min_face`, area-averaged), gives candidate boxes at
//!    stride 2 with a face probability and a box correction; non-maximum suppression per
//!    level (IoU 0.5), then over all levels (0.7); the corrected boxes are made square.
//! 2. R-Net on each candidate's 24x24 crop rescores and corrects it (threshold, NMS 0.7).
//! 3. O-Net on 48x48 crops rescores, corrects, and gives the five landmarks (eye centres,
//!    nose tip, mouth corners); a last NMS keeps a box that overlaps a better one by less
//!    than 0.7 of the smaller's area.
//!
//! Every step follows facenet-pytorch's arithmetic (its crop, truncation, clamping and
//! suppression rules included), so the faces, boxes and landmarks are its own; the tests
//! hold them to facenet-pytorch on real photos.

use crate::detect::{clip_to_image, FaceBox, FaceDetector};
use crate::error::{Error, Result};
use crate::kernels::conv2d;
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::collections::HashMap;
use std::path::Path;

/// facenet-pytorch's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct MtcnnSettings {
    /// The smallest face looked for, in pixels: the pyramid starts at `12 / min_face`.
    pub min_face: f64,
    /// Probability thresholds of P-Net, R-Net and O-Net.
    pub thresholds: [f32; 3],
    /// Scale between pyramid levels.
    pub factor: f64,
}

impl Default for MtcnnSettings {
    fn default() -> Self {
        MtcnnSettings {
            min_face: 20.0,
            thresholds: [0.6, 0.7, 0.7],
            factor: 0.709,
        }
    }
}

/// One face as MTCNN gives it: the box corners (x1, y1, x2, y2) in image coordinates (they
/// may reach past the image), O-Net's probability, and the five landmarks (left eye,
/// right eye, nose, left and right mouth corners, as seen in the image) as (x, y).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MtcnnFace {
    pub corners: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

/// The three networks and the settings.
pub struct Mtcnn {
    pnet: PNet,
    rnet: RNet,
    onet: ONet,
    settings: MtcnnSettings,
}

/// The weight files, as facenet-pytorch ships them in `facenet_pytorch/data/`.
pub const WEIGHT_FILES: [&str; 3] = ["pnet.pt", "rnet.pt", "onet.pt"];

impl Mtcnn {
    /// The networks from facenet-pytorch's `pnet.pt`, `rnet.pt` and `onet.pt` in `dir`.
    pub fn load(dir: &Path, settings: MtcnnSettings) -> Result<Self> {
        if settings.min_face < 12.0 || !(0.1..1.0).contains(&settings.factor) {
            return Err(Error::config(format!(
                "MTCNN needs min_face >= 12 and a pyramid factor in [0.1, 1), got {} and {}",
                settings.min_face, settings.factor
            )));
        }
        let read = |file: &str| -> Result<Weights> {
            let path = dir.join(file);
            if !path.exists() {
                return Err(Error::MissingAsset {
                    path,
                    hint: "MTCNN's weights come with facenet-pytorch: gfer assets fetch mtcnn"
                        .into(),
                });
            }
            let tensors = crate::formats::pytorch::read_tensors(&path, None, &Device::Cpu)?;
            Ok(Weights {
                origin: path.display().to_string(),
                tensors,
            })
        };
        Ok(Mtcnn {
            pnet: PNet::new(&read(WEIGHT_FILES[0])?)?,
            rnet: RNet::new(&read(WEIGHT_FILES[1])?)?,
            onet: ONet::new(&read(WEIGHT_FILES[2])?)?,
            settings,
        })
    }

    pub fn settings(&self) -> &MtcnnSettings {
        &self.settings
    }

    /// The faces in `image`, in the order of the last suppression (most probable first).
    pub fn detect_faces(&self, image: &RgbImage) -> Result<Vec<MtcnnFace>> {
        let planes = Planes::of(image);
        let candidates = self.proposals(&planes)?;
        let candidates = self.refine(&planes, candidates)?;
        self.output(&planes, candidates)
    }

    /// Stage 1: P-Net over the pyramid.
    fn proposals(&self, planes: &Planes) -> Result<Vec<Candidate>> {
        let (h, w) = (planes.height as f64, planes.width as f64);
        let mut candidates = Vec::new();
        for scale in pyramid(h, w, &self.settings) {
            let size = ((h * scale + 1.0) as usize, (w * scale + 1.0) as usize);
            let input = planes.resized(0, 0, planes.width, planes.height, size)?;
            let (regression, probability) = self.pnet.forward(&input)?;
            let found = grid_boxes(
                &regression,
                &probability,
                scale as f32,
                self.settings.thresholds[0],
            )?;
            let keep = nms(&found, 0.5, Overlap::Union);
            candidates.extend(keep.into_iter().map(|i| found[i]));
        }
        let keep = nms(&candidates, 0.7, Overlap::Union);
        Ok(keep
            .into_iter()
            .map(|i| {
                let c = candidates[i];
                let [x1, y1, x2, y2] = c.corners;
                let (w, h) = (x2 - x1, y2 - y1);
                let corrected = [
                    x1 + c.regression[0] * w,
                    y1 + c.regression[1] * h,
                    x2 + c.regression[2] * w,
                    y2 + c.regression[3] * h,
                ];
                Candidate {
                    corners: square(corrected),
                    ..c
                }
            })
            .collect())
    }

    /// Stage 2: R-Net on 24x24 crops.
    fn refine(&self, planes: &Planes, candidates: Vec<Candidate>) -> Result<Vec<Candidate>> {
        let (candidates, crops) = crops(planes, candidates, 24)?;
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let (regression, probability) = self.rnet.forward(&crops)?;
        let passed = rescored(
            candidates,
            &probability,
            &regression,
            self.settings.thresholds[1],
        );
        let keep = nms(&passed, 0.7, Overlap::Union);
        Ok(keep
            .into_iter()
            .map(|i| {
                let c = passed[i];
                Candidate {
                    corners: square(corrected(c.corners, c.regression)),
                    ..c
                }
            })
            .collect())
    }

    /// Stage 3: O-Net on 48x48 crops, with the landmarks.
    fn output(&self, planes: &Planes, candidates: Vec<Candidate>) -> Result<Vec<MtcnnFace>> {
        let (candidates, crops) = crops(planes, candidates, 48)?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let (regression, landmarks, probability) = self.onet.forward(&crops)?;
        let landmarks = landmarks.to_vec2::<f32>()?;
        let threshold = self.settings.thresholds[2];
        let probability = probability.to_vec1::<f32>()?;
        let regression = regression.to_vec2::<f32>()?;
        let mut faces = Vec::new();
        for (i, c) in candidates.iter().enumerate() {
            if probability[i] <= threshold {
                continue;
            }
            let [x1, y1, x2, y2] = c.corners;
            let (w, h) = (x2 - x1 + 1.0, y2 - y1 + 1.0);
            let points = std::array::from_fn(|j| {
                [
                    w * landmarks[i][j] + x1 - 1.0,
                    h * landmarks[i][j + 5] + y1 - 1.0,
                ]
            });
            let reg = [
                regression[i][0],
                regression[i][1],
                regression[i][2],
                regression[i][3],
            ];
            faces.push(MtcnnFace {
                corners: corrected(c.corners, reg),
                score: probability[i],
                landmarks: points,
            });
        }
        let boxes: Vec<Candidate> = faces
            .iter()
            .map(|f| Candidate {
                corners: f.corners,
                score: f.score,
                regression: [0.0; 4],
            })
            .collect();
        Ok(nms(&boxes, 0.7, Overlap::Smaller)
            .into_iter()
            .map(|i| faces[i])
            .collect())
    }
}

/// MTCNN as a [`FaceDetector`]: the faces scoring at least `min_score` (O-Net's
/// probability; MTCNN's own last threshold is lower), their boxes rounded to whole pixels
/// and clipped to the image, with their landmarks.
pub struct MtcnnDetector {
    pub mtcnn: Mtcnn,
    pub min_score: f32,
}

/// The final score MTCNN faces need by default, calibrated on the hand-counted photos of
/// README's detection table: MTCNN's own last threshold (0.7) keeps a false face there that
/// this one drops.
pub const DEFAULT_MIN_SCORE: f32 = 0.9;

impl FaceDetector for MtcnnDetector {
    fn detect(&self, image: &RgbImage) -> Result<Vec<FaceBox>> {
        let (width, height) = image.dimensions();
        let mut faces: Vec<FaceBox> = self
            .mtcnn
            .detect_faces(image)?
            .into_iter()
            .filter(|f| f.score >= self.min_score)
            .filter_map(|f| {
                let [x1, y1, x2, y2] = f.corners.map(|v| v.round() as i64);
                let (w, h) = ((x2 - x1).max(0) as u32, (y2 - y1).max(0) as u32);
                let rect = clip_to_image(x1 as i32, y1 as i32, w, h, width, height)?;
                Some(FaceBox {
                    rect,
                    score: f.score,
                    landmarks: Some(f.landmarks),
                })
            })
            .collect();
        faces.sort_by_key(|f| (f.rect.x, f.rect.y));
        Ok(faces)
    }
}

/// The pyramid's scales: from 12 / min_face, times `factor`, while the shorter side is at
/// least 12 pixels.
fn pyramid(h: f64, w: f64, settings: &MtcnnSettings) -> Vec<f64> {
    let m = 12.0 / settings.min_face;
    let mut shorter = h.min(w) * m;
    let mut scale = m;
    let mut scales = Vec::new();
    while shorter >= 12.0 {
        scales.push(scale);
        scale *= settings.factor;
        shorter *= settings.factor;
    }
    scales
}

/// A box being considered: corners, probability, and the network's correction.
#[derive(Clone, Copy, Debug)]
struct Candidate {
    corners: [f32; 4],
    score: f32,
    regression: [f32; 4],
}

/// P-Net's boxes: one per output cell whose face probability reaches `threshold`, the
/// 12x12 window the cell sees, in image coordinates, in row-major cell order.
fn grid_boxes(
    regression: &Tensor,
    probability: &Tensor,
    scale: f32,
    threshold: f32,
) -> Result<Vec<Candidate>> {
    let probability = probability.squeeze(0)?.to_vec2::<f32>()?;
    let regression = regression.squeeze(0)?.to_vec3::<f32>()?;
    let mut boxes = Vec::new();
    for (y, row) in probability.iter().enumerate() {
        for (x, &p) in row.iter().enumerate() {
            if p < threshold {
                continue;
            }
            let (bx, by) = (x as f32, y as f32);
            boxes.push(Candidate {
                corners: [
                    ((2.0 * bx + 1.0) / scale).floor(),
                    ((2.0 * by + 1.0) / scale).floor(),
                    ((2.0 * bx + 12.0) / scale).floor(),
                    ((2.0 * by + 12.0) / scale).floor(),
                ],
                score: p,
                regression: std::array::from_fn(|k| regression[k][y][x]),
            });
        }
    }
    Ok(boxes)
}

/// `corners` moved by the network's correction, in units of the box's side plus one.
fn corrected(corners: [f32; 4], reg: [f32; 4]) -> [f32; 4] {
    let [x1, y1, x2, y2] = corners;
    let (w, h) = (x2 - x1 + 1.0, y2 - y1 + 1.0);
    [
        x1 + reg[0] * w,
        y1 + reg[1] * h,
        x2 + reg[2] * w,
        y2 + reg[3] * h,
    ]
}

/// The square with the same centre as the box and its longer side.
fn square(corners: [f32; 4]) -> [f32; 4] {
    let [x1, y1, x2, y2] = corners;
    let (h, w) = (y2 - y1, x2 - x1);
    let l = w.max(h);
    let (x1, y1) = (x1 + w * 0.5 - l * 0.5, y1 + h * 0.5 - l * 0.5);
    [x1, y1, x1 + l, y1 + l]
}

/// The candidates whose new probability passes `threshold`, with the new probability and
/// correction.
fn rescored(
    candidates: Vec<Candidate>,
    probability: &Tensor,
    regression: &Tensor,
    threshold: f32,
) -> Vec<Candidate> {
    let (Ok(probability), Ok(regression)) =
        (probability.to_vec1::<f32>(), regression.to_vec2::<f32>())
    else {
        return Vec::new();
    };
    candidates
        .into_iter()
        .enumerate()
        .filter(|(i, _)| probability[*i] > threshold)
        .map(|(i, c)| Candidate {
            corners: c.corners,
            score: probability[i],
            regression: [
                regression[i][0],
                regression[i][1],
                regression[i][2],
                regression[i][3],
            ],
        })
        .collect()
}

/// How two boxes' overlap is measured.
#[derive(Clone, Copy, PartialEq)]
enum Overlap {
    /// Intersection over union of the areas `(x2 - x1) (y2 - y1)` (torchvision's `nms`).
    Union,
    /// Intersection over the smaller area, areas counting the corner pixels
    /// `(x2 - x1 + 1) (y2 - y1 + 1)` (facenet-pytorch's `nms_numpy(..., 'Min')`).
    Smaller,
}

/// Greedy non-maximum suppression: the most probable box stays, and the boxes that
/// overlap it by more than `threshold` go. The kept boxes' indices, most probable first.
fn nms(boxes: &[Candidate], threshold: f32, overlap: Overlap) -> Vec<usize> {
    let one = if overlap == Overlap::Smaller {
        1.0
    } else {
        0.0
    };
    let area = |b: &[f32; 4]| (b[2] - b[0] + one) * (b[3] - b[1] + one);
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&a, &b| boxes[b].score.total_cmp(&boxes[a].score));
    let mut suppressed = vec![false; boxes.len()];
    let mut keep = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        if suppressed[i] {
            continue;
        }
        keep.push(i);
        let a = &boxes[i].corners;
        for &j in &order[k + 1..] {
            let b = &boxes[j].corners;
            let w = (a[2].min(b[2]) - a[0].max(b[0]) + one).max(0.0);
            let h = (a[3].min(b[3]) - a[1].max(b[1]) + one).max(0.0);
            let inter = w * h;
            let ratio = match overlap {
                Overlap::Union => inter / (area(a) + area(b) - inter),
                Overlap::Smaller => inter / area(a).min(area(b)),
            };
            if ratio > threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// The candidates whose crop is not empty, and their crops as one batch `[N,3,side,side]`:
/// each box truncated to whole pixels and clamped to the image as facenet-pytorch's
/// `pad` does, then area-resized and normalised.
fn crops(
    planes: &Planes,
    candidates: Vec<Candidate>,
    side: usize,
) -> Result<(Vec<Candidate>, Tensor)> {
    let mut kept = Vec::with_capacity(candidates.len());
    let mut batch = Vec::with_capacity(candidates.len());
    for c in candidates {
        let [x1, y1, x2, y2] = c.corners.map(|v| v.trunc() as i64);
        let (x, y) = (x1.max(1), y1.max(1));
        let (ex, ey) = (x2.min(planes.width as i64), y2.min(planes.height as i64));
        if ey > y - 1 && ex > x - 1 {
            let [x0, y0, x1, y1] = [x - 1, y - 1, ex, ey].map(|v| v as usize);
            batch.push(planes.resized(x0, y0, x1, y1, (side, side))?);
            kept.push(c);
        }
    }
    if batch.is_empty() {
        return Ok((
            kept,
            Tensor::zeros((0, 3, side, side), DType::F32, &Device::Cpu)?,
        ));
    }
    Ok((kept, Tensor::cat(&batch, 0)?))
}

/// The image as three planes of f32 pixel values.
struct Planes {
    width: usize,
    height: usize,
    /// `[3][height * width]`, channel-major.
    values: Vec<f32>,
}

impl Planes {
    fn of(image: &RgbImage) -> Planes {
        let (width, height) = (image.width() as usize, image.height() as usize);
        let mut values = vec![0.0f32; 3 * width * height];
        for (i, pixel) in image.pixels().enumerate() {
            for c in 0..3 {
                values[c * width * height + i] = pixel[c] as f32;
            }
        }
        Planes {
            width,
            height,
            values,
        }
    }

    /// The region `[x0, x1) x [y0, y1)` resized to `(out_h, out_w)` by area averaging
    /// (PyTorch's `interpolate(mode="area")`: each output pixel the mean of the input
    /// pixels from `floor(i * in / out)` to `ceil((i + 1) * in / out)`), then normalised
    /// as MTCNN's input, `(v - 127.5) / 128`: `[1,3,out_h,out_w]`.
    fn resized(
        &self,
        x0: usize,
        y0: usize,
        x1: usize,
        y1: usize,
        (out_h, out_w): (usize, usize),
    ) -> Result<Tensor> {
        let (in_h, in_w) = (y1 - y0, x1 - x0);
        let window = |i: usize, input: usize, output: usize| {
            (i * input / output, ((i + 1) * input).div_ceil(output))
        };
        let columns: Vec<(usize, usize)> = (0..out_w).map(|j| window(j, in_w, out_w)).collect();
        let mut out = vec![0.0f32; 3 * out_h * out_w];
        for c in 0..3 {
            let plane =
                &self.values[c * self.width * self.height..(c + 1) * self.width * self.height];
            for i in 0..out_h {
                let (h0, h1) = window(i, in_h, out_h);
                for (j, &(w0, w1)) in columns.iter().enumerate() {
                    let mut sum = 0.0f32;
                    for row in h0..h1 {
                        let start = (y0 + row) * self.width + x0;
                        sum += plane[start + w0..start + w1].iter().sum::<f32>();
                    }
                    let mean = sum / (h1 - h0) as f32 / (w1 - w0) as f32;
                    out[(c * out_h + i) * out_w + j] = (mean - 127.5) * 0.0078125;
                }
            }
        }
        Ok(Tensor::from_vec(out, (1, 3, out_h, out_w), &Device::Cpu)?)
    }
}

/// A network's tensors by name, and the file they came from.
struct Weights {
    origin: String,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    fn get(&self, name: &str, dims: &[usize]) -> Result<Tensor> {
        let tensor = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::weights(&self.origin, format!("tensor {name} is missing")))?;
        if tensor.dims() != dims {
            return Err(Error::weights(
                &self.origin,
                format!("{name} has shape {:?}, MTCNN needs {dims:?}", tensor.dims()),
            ));
        }
        Ok(tensor.to_dtype(DType::F32)?)
    }

    fn conv(&self, name: &str, dims: [usize; 4]) -> Result<Conv> {
        Ok(Conv {
            weight: self.get(&format!("{name}.weight"), &dims)?,
            bias: self
                .get(&format!("{name}.bias"), &[dims[0]])?
                .reshape((1, dims[0], 1, 1))?,
        })
    }

    fn dense(&self, name: &str, dims: [usize; 2]) -> Result<Dense> {
        Ok(Dense {
            weight: self.get(&format!("{name}.weight"), &dims)?.t()?,
            bias: self.get(&format!("{name}.bias"), &[dims[0]])?,
        })
    }

    /// A PReLU's slopes, shaped to broadcast over `[N,C,H,W]` (or `[N,C]` when `flat`).
    fn prelu(&self, name: &str, channels: usize, flat: bool) -> Result<Tensor> {
        let alpha = self.get(&format!("{name}.weight"), &[channels])?;
        Ok(if flat {
            alpha.reshape((1, channels))?
        } else {
            alpha.reshape((1, channels, 1, 1))?
        })
    }
}

struct Conv {
    weight: Tensor,
    bias: Tensor,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(conv2d(x, &self.weight, 1, 0)?.broadcast_add(&self.bias)?)
    }
}

struct Dense {
    /// `[in, out]`.
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight)?.broadcast_add(&self.bias)?)
    }
}

/// `max(x, 0) + alpha * min(x, 0)`.
fn prelu(x: &Tensor, alpha: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + x.minimum(0.0)?.broadcast_mul(alpha)?)?)
}

/// Max-pooling with PyTorch's `ceil_mode=True`: the last window may run past the input
/// (it is cut there), as long as it starts inside it.
fn max_pool_ceil(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let side = |input: usize| {
        let mut out = (input.saturating_sub(kernel)).div_ceil(stride) + 1;
        if (out - 1) * stride >= input {
            out -= 1;
        }
        out
    };
    let (out_h, out_w) = (side(h), side(w));
    let (pad_h, pad_w) = (
        ((out_h - 1) * stride + kernel).saturating_sub(h),
        ((out_w - 1) * stride + kernel).saturating_sub(w),
    );
    let mut x = x.clone();
    if pad_w > 0 {
        let fill = Tensor::full(f32::NEG_INFINITY, (n, c, h, pad_w), x.device())?;
        x = Tensor::cat(&[&x, &fill], 3)?;
    }
    if pad_h > 0 {
        let fill = Tensor::full(f32::NEG_INFINITY, (n, c, pad_h, w + pad_w), x.device())?;
        x = Tensor::cat(&[&x, &fill], 2)?;
    }
    Ok(x.max_pool2d_with_stride(kernel, stride)?)
}

/// The face probability: softmax over the two classes, the second.
fn face_probability(logits: &Tensor) -> Result<Tensor> {
    let probabilities = candle_nn::ops::softmax(logits, 1)?;
    Ok(probabilities.narrow(1, 1, 1)?.squeeze(1)?)
}

/// `[N,C,H,W]` flattened as facenet-pytorch does before its dense layers: `permute(0, 3, 2,
/// 1)` (the order of the original Caffe model).
fn caffe_flatten(x: &Tensor) -> Result<Tensor> {
    let n = x.dim(0)?;
    Ok(x.permute((0, 3, 2, 1))?.contiguous()?.reshape((n, ()))?)
}

struct PNet {
    conv1: Conv,
    prelu1: Tensor,
    conv2: Conv,
    prelu2: Tensor,
    conv3: Conv,
    prelu3: Tensor,
    conv4_1: Conv,
    conv4_2: Conv,
}

impl PNet {
    fn new(w: &Weights) -> Result<Self> {
        Ok(PNet {
            conv1: w.conv("conv1", [10, 3, 3, 3])?,
            prelu1: w.prelu("prelu1", 10, false)?,
            conv2: w.conv("conv2", [16, 10, 3, 3])?,
            prelu2: w.prelu("prelu2", 16, false)?,
            conv3: w.conv("conv3", [32, 16, 3, 3])?,
            prelu3: w.prelu("prelu3", 32, false)?,
            conv4_1: w.conv("conv4_1", [2, 32, 1, 1])?,
            conv4_2: w.conv("conv4_2", [4, 32, 1, 1])?,
        })
    }

    /// `[N,3,H,W]` -> box corrections `[N,4,h,w]` and face probabilities `[N,h,w]`.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = prelu(&self.conv1.forward(x)?, &self.prelu1)?;
        let x = max_pool_ceil(&x, 2, 2)?;
        let x = prelu(&self.conv2.forward(&x)?, &self.prelu2)?;
        let x = prelu(&self.conv3.forward(&x)?, &self.prelu3)?;
        let probability = face_probability(&self.conv4_1.forward(&x)?)?;
        Ok((self.conv4_2.forward(&x)?, probability))
    }
}

struct RNet {
    conv1: Conv,
    prelu1: Tensor,
    conv2: Conv,
    prelu2: Tensor,
    conv3: Conv,
    prelu3: Tensor,
    dense4: Dense,
    prelu4: Tensor,
    dense5_1: Dense,
    dense5_2: Dense,
}

impl RNet {
    fn new(w: &Weights) -> Result<Self> {
        Ok(RNet {
            conv1: w.conv("conv1", [28, 3, 3, 3])?,
            prelu1: w.prelu("prelu1", 28, false)?,
            conv2: w.conv("conv2", [48, 28, 3, 3])?,
            prelu2: w.prelu("prelu2", 48, false)?,
            conv3: w.conv("conv3", [64, 48, 2, 2])?,
            prelu3: w.prelu("prelu3", 64, false)?,
            dense4: w.dense("dense4", [128, 576])?,
            prelu4: w.prelu("prelu4", 128, true)?,
            dense5_1: w.dense("dense5_1", [2, 128])?,
            dense5_2: w.dense("dense5_2", [4, 128])?,
        })
    }

    /// `[N,3,24,24]` -> box corrections `[N,4]` and face probabilities `[N]`.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let x = prelu(&self.conv1.forward(x)?, &self.prelu1)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = prelu(&self.conv2.forward(&x)?, &self.prelu2)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = prelu(&self.conv3.forward(&x)?, &self.prelu3)?;
        let x = prelu(&self.dense4.forward(&caffe_flatten(&x)?)?, &self.prelu4)?;
        let probability = face_probability(&self.dense5_1.forward(&x)?)?;
        Ok((self.dense5_2.forward(&x)?, probability))
    }
}

struct ONet {
    conv1: Conv,
    prelu1: Tensor,
    conv2: Conv,
    prelu2: Tensor,
    conv3: Conv,
    prelu3: Tensor,
    conv4: Conv,
    prelu4: Tensor,
    dense5: Dense,
    prelu5: Tensor,
    dense6_1: Dense,
    dense6_2: Dense,
    dense6_3: Dense,
}

impl ONet {
    fn new(w: &Weights) -> Result<Self> {
        Ok(ONet {
            conv1: w.conv("conv1", [32, 3, 3, 3])?,
            prelu1: w.prelu("prelu1", 32, false)?,
            conv2: w.conv("conv2", [64, 32, 3, 3])?,
            prelu2: w.prelu("prelu2", 64, false)?,
            conv3: w.conv("conv3", [64, 64, 3, 3])?,
            prelu3: w.prelu("prelu3", 64, false)?,
            conv4: w.conv("conv4", [128, 64, 2, 2])?,
            prelu4: w.prelu("prelu4", 128, false)?,
            dense5: w.dense("dense5", [256, 1152])?,
            prelu5: w.prelu("prelu5", 256, true)?,
            dense6_1: w.dense("dense6_1", [2, 256])?,
            dense6_2: w.dense("dense6_2", [4, 256])?,
            dense6_3: w.dense("dense6_3", [10, 256])?,
        })
    }

    /// `[N,3,48,48]` -> box corrections `[N,4]`, landmarks `[N,10]` (five x, then five y,
    /// as fractions of the box) and face probabilities `[N]`.
    fn forward(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let x = prelu(&self.conv1.forward(x)?, &self.prelu1)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = prelu(&self.conv2.forward(&x)?, &self.prelu2)?;
        let x = max_pool_ceil(&x, 3, 2)?;
        let x = prelu(&self.conv3.forward(&x)?, &self.prelu3)?;
        let x = max_pool_ceil(&x, 2, 2)?;
        let x = prelu(&self.conv4.forward(&x)?, &self.prelu4)?;
        let x = prelu(&self.dense5.forward(&caffe_flatten(&x)?)?, &self.prelu5)?;
        let probability = face_probability(&self.dense6_1.forward(&x)?)?;
        Ok((
            self.dense6_2.forward(&x)?,
            self.dense6_3.forward(&x)?,
            probability,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(corners: [f32; 4], score: f32) -> Candidate {
        Candidate {
            corners,
            score,
            regression: [0.0; 4],
        }
    }

    #[test]
    fn suppression_keeps_the_most_probable_of_overlapping_boxes() {
        let boxes = [
            candidate([0.0, 0.0, 10.0, 10.0], 0.8),
            candidate([1.0, 1.0, 11.0, 11.0], 0.9),
            candidate([20.0, 20.0, 30.0, 30.0], 0.7),
        ];
        // IoU of the first two: 81 / 119 = 0.68.
        assert_eq!(nms(&boxes, 0.5, Overlap::Union), [1, 2]);
        assert_eq!(nms(&boxes, 0.7, Overlap::Union), [1, 0, 2]);
        // A box inside a bigger one overlaps the smaller's whole area.
        let nested = [
            candidate([0.0, 0.0, 20.0, 20.0], 0.9),
            candidate([5.0, 5.0, 9.0, 9.0], 0.95),
        ];
        assert_eq!(nms(&nested, 0.7, Overlap::Smaller), [1]);
        assert_eq!(nms(&nested, 0.7, Overlap::Union), [1, 0]);
    }

    #[test]
    fn ceil_mode_pooling_keeps_the_cut_last_window() -> Result<()> {
        let x = Tensor::arange(0f32, 25.0, &Device::Cpu)?.reshape((1, 1, 5, 5))?;
        let pooled = max_pool_ceil(&x, 2, 2)?;
        assert_eq!(
            pooled.squeeze(0)?.squeeze(0)?.to_vec2::<f32>()?,
            [[6.0, 8.0, 9.0], [16.0, 18.0, 19.0], [21.0, 23.0, 24.0]]
        );
        // A 3x3 window with stride 2 over 4: outputs at 0 and 2 (the second cut).
        let x = Tensor::arange(0f32, 16.0, &Device::Cpu)?.reshape((1, 1, 4, 4))?;
        assert_eq!(max_pool_ceil(&x, 3, 2)?.dims(), [1, 1, 2, 2]);
        Ok(())
    }

    #[test]
    fn area_resizing_averages_pytorchs_windows() -> Result<()> {
        let image = RgbImage::from_fn(5, 3, |x, y| image::Rgb([(10 * x + y) as u8, 0, 255]));
        let planes = Planes::of(&image);
        let out = planes
            .resized(0, 0, 5, 3, (2, 2))?
            .squeeze(0)?
            .to_vec3::<f32>()?;
        // Rows: [0, 2) and [1, 3); columns: [0, 3) and [2, 5).
        let mean = |xs: std::ops::Range<u32>, ys: std::ops::Range<u32>| {
            let (mut sum, mut n) = (0.0, 0.0);
            for y in ys.clone() {
                for x in xs.clone() {
                    sum += (10 * x + y) as f32;
                    n += 1.0;
                }
            }
            (sum / n - 127.5) * 0.0078125
        };
        assert!((out[0][0][0] - mean(0..3, 0..2)).abs() < 1e-6);
        assert!((out[0][1][1] - mean(2..5, 1..3)).abs() < 1e-6);
        assert!((out[2][0][0] - (255.0 - 127.5) * 0.0078125).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn the_pyramid_stops_at_twelve_pixels() {
        let scales = pyramid(100.0, 200.0, &MtcnnSettings::default());
        assert!((scales[0] - 0.6).abs() < 1e-12);
        assert!(scales.iter().all(|s| 100.0 * s >= 12.0));
        assert!(100.0 * scales.last().unwrap() * 0.709 < 12.0);
    }
}
