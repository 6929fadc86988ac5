"""Per-layer quantization sensitivity, per timestep bucket (MixDQ, Zhao et al. 2024).

For every quantizable layer and every candidate format, the layer alone is quantized (every other
layer stays float) and the damage is measured two ways, decoupled as MixDQ does:

- output metric, for every layer: SQNR (dB) of the denoiser's output against the cached float
  output, on calls replayed from the calibration reservoir, one value per timestep bucket;
- image metric: PSNR/SSIM and relative error of final samples (seeded samples through the
  sampler) against the float model's samples, pooled and typical (the geometric mean over samples of
  each sample's error: what the allocator reads, `ImageScore.cost`); by default for every layer, or
  for a budget of `image_layers` layers.

Why two: one denoiser call's output SQNR sees the error of a single step, and the sampler amplifies
some layers' errors into the image far more than others. On builtin:digits at W4A8 (full methods),
the ratio of image to output relative error spans 85x across layers: 3.5x for the first down-block's
conv1, 300x for a mid-block time-embedding projection (bench/results/mixed-precision-digits-
sensitivity.json). The two rankings agree broadly (Spearman 0.97) but not on the layers a budget
decides between: at 5 average bits, the allocation costed by the image metric measured 38.69 dB,
the one costed by the output metric 37.10 dB (bench/results/mixed-precision-digits.json). So the
allocator's cost is the image relative error wherever it was measured. When the image budget is
smaller than the layer count, it goes to the layers where the output metric is least trustworthy:
(a) the largest per-bucket SQNR spread and (b) the largest output error, half each; the rest are
costed by the output metric, brought to image units by one global factor
(`SensitivityReport.output_to_image`).

What is measured (`SensitivityOptions.methods`, a `SensitivityMethods`):
- "full": each candidate's full preset (learned rounding, clipping search, smoothing), exactly the
  module a mixed recipe would contain. The model is quantized once per candidate (on a copy); the
  PTQ methods are layer-wise on the float model's recorded inputs, so these modules are reused
  unchanged by `compress` with a mixed-precision plan. Learned rounding recovers far more on some layers than on
  others, so it changes which layers need 8 bits; this is what mixed precision uses.
- "rtn": each candidate's round-to-nearest variant (`PRESET-rtn`), built on demand: no data, seconds
  per layer; what the sensitivity report uses by default. `bf16` rounds the weight to bfloat16 and back.

Modules: `report` (the SensitivityReport and its JSON: what allocation and rendering read),
`output_metric`, `image_metric`, `variants` (the per-(layer, candidate) module cache) and
`measure` (SensitivityOptions and the run). This file imports none of them, so reading a report
does not load the measuring code.
"""
