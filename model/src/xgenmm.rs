//! The xGen-MM composite (HF `XGenMMModelForConditionalGeneration`, LAVIS `XGenMMPerceiver`):
//! every image is encoded by the ViT (all views batched), its any-res crops are stitched and cut
//! into groups with a padding mask (docs/reference.md §2.7, including the band-chunking quirk),
//! each group is resampled to `num_latents` tokens, and each `<image>` token of the text is
//! replaced in place by its image's tokens. Samples are stacked with right padding (training) or
//! left padding (generation).
//!
//! Long because image encoding, token splicing and padding are one forward pass, read best whole.

use burn::prelude::*;

use crate::config::{AspectMode, XGenMMConfig};
use crate::error::ModelError;
use crate::phi3::{KvCache, LogitsFor, Phi3ForCausalLM};
use crate::resampler::PerceiverResampler;
use crate::siglip::SiglipVisionTransformer;

/// Token ids the composite needs. They come from the tokenizer (see the loader); the defaults
/// follow the reference's order of additions after `initial_tokenizer_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    /// `<image>`: replaced by the image's vision tokens.
    pub image: u32,
    /// Padding id; its numeric value also fills padded embedding slots (a reference quirk).
    pub pad: u32,
}

impl SpecialTokens {
    /// The ids implied by a config: `<image>` is the first id after `initial_tokenizer_len`, and
    /// `<pad>` the last one before it (the reference adds `<pad>` right before the media tokens).
    pub fn from_config(cfg: &XGenMMConfig) -> Self {
        let initial = cfg.initial_tokenizer_len as u32;
        Self {
            image: initial,
            pad: initial.saturating_sub(1),
        }
    }
}

/// One image as the model takes it.
#[derive(Debug, Clone)]
pub struct ImageInput {
    /// Normalised views `[V, C, S, S]`: the squashed global view first, then the crops row-major.
    /// `V = 1` for a fixed-resolution (single view) image.
    pub pixels: Tensor<4>,
    /// Any-res crop grid as (columns, rows); `None` for a single view.
    pub grid: Option<(usize, usize)>,
    /// Original image size (width, height) in pixels, for the any-res padding mask.
    pub original_size: (usize, usize),
}

impl ImageInput {
    /// Builds an image from host data: `pixels` holds `views` normalised views of
    /// `channels × size × size` values each (CHW, view-major), as an image pipeline produces them.
    /// `grid` is `(columns, rows)` of the crops (ignored for a single view).
    pub fn from_host(
        pixels: Vec<f32>,
        views: usize,
        channels: usize,
        size: usize,
        grid: (usize, usize),
        original_size: (usize, usize),
        device: &Device,
    ) -> Result<Self, ModelError> {
        let expected = views * channels * size * size;
        if pixels.len() != expected || views == 0 {
            return Err(ModelError::Input(format!(
                "image pixels: expected {views} views of {channels}x{size}x{size} ({expected} values), got {}",
                pixels.len()
            )));
        }
        Ok(Self {
            pixels: Tensor::from_data(
                TensorData::new(pixels, [views, channels, size, size]),
                device,
            ),
            grid: (views > 1).then_some(grid),
            original_size,
        })
    }
}

/// A batch of interleaved samples: token ids with `<image>` markers and the images in order.
#[derive(Debug, Clone, Default)]
pub struct MultimodalInput {
    /// Token ids per sample (unpadded).
    pub input_ids: Vec<Vec<u32>>,
    /// Images per sample, one per `<image>` token, in order.
    pub images: Vec<Vec<ImageInput>>,
    /// Labels per sample aligned with `input_ids` (-100 = ignored), for training.
    pub labels: Option<Vec<Vec<i64>>>,
}

/// Which side padding goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Padding after the tokens (training).
    Right,
    /// Padding before the tokens (generation).
    Left,
}

/// The fused sequence fed to the language model.
#[derive(Debug, Clone)]
pub struct FusedSequence {
    /// Input embeddings `[B, S, D]`.
    pub embeds: Tensor<3>,
    /// Real positions (true) per row.
    pub mask: Vec<Vec<bool>>,
    /// Expanded labels per row (-100 for vision tokens and padding), when labels were given.
    pub labels: Option<Vec<Vec<i64>>>,
    /// For each original token, its index in the expanded row (an `<image>` maps to its first
    /// vision position).
    pub text_index: Vec<Vec<usize>>,
    /// Vision embeddings inserted per row.
    pub vision_tokens: Vec<usize>,
}

/// One row of the fused sequence before padding.
struct SplicedRow {
    /// `[S_row, D]`.
    embeds: Tensor<2>,
    /// For each original token, its index in the row.
    text_index: Vec<usize>,
    /// Expanded labels (empty when the batch has none).
    labels: Vec<i64>,
    /// Vision embeddings inserted.
    vision_tokens: usize,
}

/// Output of [`XGenMM::forward`].
#[derive(Debug, Clone)]
pub struct XGenMMOutput {
    /// Logits over the expanded sequence `[B, S, V]`.
    pub logits: Tensor<3>,
    /// The fused inputs (masks, labels, index maps).
    pub fused: FusedSequence,
}

/// The composite model.
#[derive(Module, Debug)]
pub struct XGenMM {
    /// SigLIP ViT (frozen in every released stage).
    pub vision_encoder: SiglipVisionTransformer,
    /// Perceiver resampler.
    pub vision_tokenizer: PerceiverResampler,
    /// Phi-3 with the decoupled vocabulary.
    pub lang_model: Phi3ForCausalLM,
    #[module(skip)]
    config: XGenMMConfig,
    #[module(skip)]
    tokens: SpecialTokens,
}

impl XGenMMConfig {
    /// Builds the composite (lazily initialised; load weights with the loader).
    pub fn init(&self, device: &Device) -> XGenMM {
        XGenMM {
            vision_encoder: self.vision.init(device),
            vision_tokenizer: self.resampler.init(device),
            lang_model: self.text.init_with_vocab(
                self.initial_tokenizer_len,
                self.num_additional_tokens,
                true,
                device,
            ),
            config: self.clone(),
            tokens: SpecialTokens::from_config(self),
        }
    }
}

impl XGenMM {
    /// The configuration the model was built from.
    pub fn config(&self) -> &XGenMMConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.lang_model.model.norm.gamma.device()
    }

    /// The float dtype of the weights (the language model's; the whole model is cast together).
    pub fn dtype(&self) -> burn::tensor::DType {
        self.lang_model.model.norm.gamma.val().dtype()
    }

    /// The special token ids in use.
    pub fn special_tokens(&self) -> SpecialTokens {
        self.tokens
    }

    /// Sets the special token ids (from the tokenizer).
    pub fn with_special_tokens(mut self, tokens: SpecialTokens) -> Self {
        self.tokens = tokens;
        self
    }

    /// Attaches LoRA branches to the language model (see [`crate::lora`]).
    pub fn attach_lora(mut self, cfg: &crate::lora::LoraConfig, device: &Device) -> Self {
        self.lang_model = self.lang_model.attach_lora(cfg, device);
        self
    }

    /// The model with LoRA branches merged into the base weights (for export).
    pub fn merge_lora(mut self) -> Self {
        self.lang_model = self.lang_model.merge_lora();
        self
    }

    /// The base model without its LoRA branches (unmerged).
    pub fn without_lora(mut self) -> Self {
        self.lang_model = self.lang_model.without_lora();
        self
    }

    /// Vision tokens one image yields: `(1 + G) · num_latents` for an any-res image with `G`
    /// crops, `num_latents` for a single view.
    pub fn vision_token_count(&self, views: usize) -> usize {
        self.group_count(views) * self.config.resampler.num_latents
    }

    fn group_count(&self, views: usize) -> usize {
        if self.config.anyres_patch_sampling {
            views
        } else {
            1
        }
    }

    /// Encodes images into their vision-token sequences `[(1 + G)·L, D_lm]`, in order.
    pub fn encode_images(&self, images: &[&ImageInput]) -> Result<Vec<Tensor<2>>, ModelError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let features = self.vision_features(images)?;
        let mut groups = Vec::new();
        let mut masks: Vec<bool> = Vec::new();
        let mut any_masked = false;
        let mut per_image = Vec::with_capacity(images.len());
        for (img, feats) in images.iter().zip(features) {
            let [views, n, d] = feats.dims();
            if views == 1 || self.config.image_aspect_ratio == AspectMode::Fixed {
                groups.push(feats.narrow(0, 0, 1));
                masks.extend(std::iter::repeat_n(true, n));
                per_image.push(1);
                continue;
            }
            let (cols, rows) = img.grid.ok_or_else(|| {
                ModelError::Input(format!("an image with {views} views needs a crop grid"))
            })?;
            if cols * rows + 1 != views {
                return Err(ModelError::Input(format!(
                    "grid {cols}x{rows} needs {} views, got {views}",
                    cols * rows + 1
                )));
            }
            let g = (n as f64).sqrt() as usize;
            if g * g != n {
                return Err(ModelError::Input(format!(
                    "views must be square (got {n} tokens)"
                )));
            }
            // Global view: one group, fully valid.
            groups.push(feats.clone().narrow(0, 0, 1));
            masks.extend(std::iter::repeat_n(true, n));
            // Crops stitched into a (rows·g) × (cols·g) grid, flattened row-major and cut into
            // consecutive chunks of n tokens (full-width bands when cols > 1).
            let crops = feats
                .narrow(0, 1, cols * rows)
                .reshape([rows, cols, g, g, d])
                .swap_dims(1, 2)
                .reshape([cols * rows, n, d]);
            let valid = anyres_valid_mask(rows * g, cols * g, img.original_size);
            any_masked |= valid.iter().any(|v| !v);
            masks.extend(valid);
            groups.push(crops);
            per_image.push(cols * rows + 1);
        }
        let media = Tensor::cat(groups, 0);
        let [total, n, _] = media.dims();
        let device = media.device();
        let valid = any_masked
            .then(|| Tensor::<2, Bool>::from_data(TensorData::new(masks, [total, n]), &device));
        let tokens = self.vision_tokenizer.forward(media, valid); // [total, L, D]
        let [_, l, dl] = tokens.dims();
        let mut out = Vec::with_capacity(per_image.len());
        let mut start = 0;
        for count in per_image {
            out.push(
                tokens
                    .clone()
                    .narrow(0, start, count)
                    .reshape([count * l, dl]),
            );
            start += count;
        }
        Ok(out)
    }

    /// ViT features `[V, N, D]` per image; views of equal size are batched in one call.
    fn vision_features(&self, images: &[&ImageInput]) -> Result<Vec<Tensor<3>>, ModelError> {
        let shapes: Vec<[usize; 4]> = images.iter().map(|i| i.pixels.dims()).collect();
        let same = shapes.windows(2).all(|w| w[0][1..] == w[1][1..]);
        if !same {
            return Ok(images
                .iter()
                .map(|i| self.vision_encoder.forward(i.pixels.clone()))
                .collect());
        }
        let all = Tensor::cat(images.iter().map(|i| i.pixels.clone()).collect(), 0);
        let feats = self.vision_encoder.forward(all);
        let mut out = Vec::with_capacity(images.len());
        let mut start = 0;
        for s in shapes {
            out.push(feats.clone().narrow(0, start, s[0]));
            start += s[0];
        }
        Ok(out)
    }

    /// Builds the fused embedding sequence of a batch.
    pub fn fuse(
        &self,
        input: &MultimodalInput,
        padding: Padding,
    ) -> Result<FusedSequence, ModelError> {
        self.check_batch(input)?;
        let all_images: Vec<&ImageInput> = input.images.iter().flatten().collect();
        let mut vision = self.encode_images(&all_images)?.into_iter();
        let text = self.embed_text(&input.input_ids); // [B, T, D]
        let mut rows = Vec::with_capacity(input.input_ids.len());
        for (i, ids) in input.input_ids.iter().enumerate() {
            let labels = input.labels.as_ref().map(|l| l[i].as_slice());
            rows.push(self.splice_row(&text, i, ids, labels, &mut vision)?);
        }
        Ok(self.pad_rows(rows, padding, input.labels.is_some()))
    }

    /// Checks a batch: as many image lists as samples, labels aligned with the ids, and one
    /// image per `<image>` token.
    fn check_batch(&self, input: &MultimodalInput) -> Result<(), ModelError> {
        let batch = input.input_ids.len();
        if batch == 0 {
            return Err(ModelError::Input("empty batch".into()));
        }
        if input.images.len() != batch {
            return Err(ModelError::Input(format!(
                "{batch} samples but {} image lists",
                input.images.len()
            )));
        }
        if let Some(labels) = &input.labels
            && (labels.len() != batch
                || labels
                    .iter()
                    .zip(&input.input_ids)
                    .any(|(l, i)| l.len() != i.len()))
        {
            return Err(ModelError::Input("labels must align with input_ids".into()));
        }
        let image_id = self.tokens.image;
        for (i, (ids, imgs)) in input.input_ids.iter().zip(&input.images).enumerate() {
            let markers = ids.iter().filter(|&&t| t == image_id).count();
            if markers != imgs.len() {
                return Err(ModelError::Input(format!(
                    "sample {i} has {markers} <image> tokens but {} images",
                    imgs.len()
                )));
            }
        }
        Ok(())
    }

    /// Embeds every row's ids in one call, right-padded with the pad id: `[B, T_max, D]`.
    fn embed_text(&self, input_ids: &[Vec<u32>]) -> Tensor<3> {
        let batch = input_ids.len();
        let max_len = input_ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = Vec::with_capacity(batch * max_len);
        for ids in input_ids {
            flat.extend(ids.iter().map(|&t| t as i64));
            flat.extend(std::iter::repeat_n(
                self.tokens.pad as i64,
                max_len - ids.len(),
            ));
        }
        let ids =
            Tensor::<2, Int>::from_data(TensorData::new(flat, [batch, max_len]), &self.device());
        self.lang_model.embed(ids)
    }

    /// Row `row` of the fused sequence: its text embeddings with each `<image>` replaced in place
    /// by the next image's vision tokens; labels expanded with -100 over vision tokens.
    fn splice_row(
        &self,
        text: &Tensor<3>,
        row: usize,
        ids: &[u32],
        labels: Option<&[i64]>,
        vision: &mut impl Iterator<Item = Tensor<2>>,
    ) -> Result<SplicedRow, ModelError> {
        let [_, max_len, width] = text.dims();
        let dtype = text.dtype();
        let row_text = text.clone().narrow(0, row, 1).reshape([max_len, width]);
        let image_id = self.tokens.image;
        let mut parts = Vec::new();
        let mut text_index = Vec::with_capacity(ids.len());
        let mut row_labels = Vec::new();
        let mut position = 0usize;
        let mut segment_start = 0usize;
        let mut vision_tokens = 0usize;
        for (j, &token) in ids.iter().enumerate() {
            if token != image_id {
                text_index.push(position);
                position += 1;
                if let Some(l) = labels {
                    row_labels.push(l[j]);
                }
                continue;
            }
            if j > segment_start {
                parts.push(row_text.clone().narrow(0, segment_start, j - segment_start));
            }
            let image = vision
                .next()
                .ok_or_else(|| ModelError::Input("missing image".into()))?;
            let n = image.dims()[0];
            parts.push(image.cast(dtype));
            text_index.push(position);
            position += n;
            vision_tokens += n;
            row_labels.extend(std::iter::repeat_n(-100, n));
            segment_start = j + 1;
        }
        if ids.len() > segment_start {
            parts.push(row_text.narrow(0, segment_start, ids.len() - segment_start));
        }
        let embeds = if parts.is_empty() {
            Tensor::zeros([0, width], (&self.device(), dtype))
        } else {
            Tensor::cat(parts, 0)
        };
        Ok(SplicedRow {
            embeds,
            text_index,
            labels: row_labels,
            vision_tokens,
        })
    }

    /// Pads spliced rows to one length (left or right) with embeddings filled with the pad id's
    /// value (a reference quirk), and builds the masks; labels of padding are -100.
    fn pad_rows(
        &self,
        rows: Vec<SplicedRow>,
        padding: Padding,
        with_labels: bool,
    ) -> FusedSequence {
        let len = rows.iter().map(|r| r.embeds.dims()[0]).max().unwrap_or(0);
        let device = self.device();
        let mut embeds = Vec::with_capacity(rows.len());
        let mut mask = Vec::with_capacity(rows.len());
        let mut labels = with_labels.then(|| Vec::with_capacity(rows.len()));
        let mut text_index = Vec::with_capacity(rows.len());
        let mut vision_tokens = Vec::with_capacity(rows.len());
        for row in rows {
            let [row_len, width] = row.embeds.dims();
            let dtype = row.embeds.dtype();
            let pad = len - row_len;
            let fill = || Tensor::<2>::full([pad, width], self.tokens.pad as f32, (&device, dtype));
            let mut index = row.text_index;
            let mut row_labels = row.labels;
            let (row_embeds, row_mask) = match padding {
                _ if pad == 0 => (row.embeds, vec![true; row_len]),
                Padding::Right => {
                    let mut m = vec![true; row_len];
                    m.resize(len, false);
                    row_labels.resize(len, -100);
                    (Tensor::cat(vec![row.embeds, fill()], 0), m)
                }
                Padding::Left => {
                    let mut m = vec![false; pad];
                    m.resize(len, true);
                    for i in index.iter_mut() {
                        *i += pad;
                    }
                    let mut l = vec![-100; pad];
                    l.extend_from_slice(&row_labels);
                    row_labels = l;
                    (Tensor::cat(vec![fill(), row.embeds], 0), m)
                }
            };
            embeds.push(row_embeds.unsqueeze::<3>());
            mask.push(row_mask);
            if let Some(l) = labels.as_mut() {
                l.push(row_labels);
            }
            text_index.push(index);
            vision_tokens.push(row.vision_tokens);
        }
        FusedSequence {
            embeds: Tensor::cat(embeds, 0),
            mask,
            labels,
            text_index,
            vision_tokens,
        }
    }

    /// Training/scoring forward: fuses the batch with right padding and returns logits over the
    /// expanded sequence together with the fused metadata (labels, masks).
    pub fn forward(&self, input: &MultimodalInput) -> Result<XGenMMOutput, ModelError> {
        let fused = self.fuse(input, Padding::Right)?;
        let logits = self.lang_model.forward_embeds(
            fused.embeds.clone(),
            &fused.mask,
            None,
            LogitsFor::All,
        )?;
        Ok(XGenMMOutput { logits, fused })
    }

    /// Prefills a cache with a left-padded batch and returns the last position's logits `[B, V]`.
    pub fn prefill(
        &self,
        input: &MultimodalInput,
        cache: &mut KvCache,
    ) -> Result<(Tensor<2>, FusedSequence), ModelError> {
        let fused = self.fuse(input, Padding::Left)?;
        let logits = self.lang_model.forward_embeds(
            fused.embeds.clone(),
            &fused.mask,
            Some(cache),
            LogitsFor::Last,
        )?;
        let [b, _, v] = logits.dims();
        Ok((logits.reshape([b, v]), fused))
    }

    /// One decoding step: `ids` has one token per row (`real` false for rows that have finished
    /// and only carry padding). Returns logits `[B, V]`.
    pub fn decode_step(
        &self,
        ids: &[u32],
        real: &[bool],
        cache: &mut KvCache,
    ) -> Result<Tensor<2>, ModelError> {
        let device = self.device();
        let b = ids.len();
        let t = Tensor::<2, Int>::from_data(
            TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [b, 1]),
            &device,
        );
        let mask: Vec<Vec<bool>> = real.iter().map(|&r| vec![r]).collect();
        let logits = self
            .lang_model
            .forward_ids(t, &mask, Some(cache), LogitsFor::Last)?;
        let [_, _, v] = logits.dims();
        Ok(logits.reshape([b, v]))
    }
}

/// The any-res "unpad" validity mask over a stitched `h × w` feature grid (row-major), for an
/// original image of `(width, height)`: rows (or columns) that only cover the black padding
/// bands are invalid. Features are not cropped; the mask is applied in the resampler.
pub fn anyres_valid_mask(h: usize, w: usize, original: (usize, usize)) -> Vec<bool> {
    let (ow, oh) = (original.0.max(1) as f64, original.1.max(1) as f64);
    let mut valid = vec![true; h * w];
    if ow / oh > w as f64 / h as f64 {
        let new_h = (oh * (w as f64 / ow)) as usize;
        let pad = h.saturating_sub(new_h) / 2;
        for r in (0..pad).chain(h - pad.min(h)..h) {
            valid[r * w..(r + 1) * w]
                .iter_mut()
                .for_each(|v| *v = false);
        }
    } else {
        let new_w = (ow * (h as f64 / oh)) as usize;
        let pad = w.saturating_sub(new_w) / 2;
        for r in 0..h {
            for c in (0..pad).chain(w - pad.min(w)..w) {
                valid[r * w + c] = false;
            }
        }
    }
    valid
}

#[cfg(test)]
mod tests {
    use super::anyres_valid_mask;

    #[test]
    fn unpad_mask_rows_for_wide_images() {
        // 2x1 grid of 2x2 tokens: 2 rows, 4 cols; a very wide image keeps the middle rows.
        let m = anyres_valid_mask(4, 4, (400, 100));
        // new_h = floor(100 * 4/400) = 1, pad = 1: first and last row invalid.
        assert_eq!(&m[0..4], &[false; 4]);
        assert_eq!(&m[4..12], &[true; 8]);
        assert_eq!(&m[12..16], &[false; 4]);
    }

    #[test]
    fn unpad_mask_columns_for_tall_images() {
        let m = anyres_valid_mask(2, 6, (100, 100));
        // aspect 1 <= 3: new_w = floor(100 * 2/100) = 2, pad = 2 columns each side.
        for r in 0..2 {
            assert_eq!(
                &m[r * 6..r * 6 + 6],
                &[false, false, true, true, false, false]
            );
        }
    }
}
