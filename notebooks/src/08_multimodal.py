# %% [markdown]
# # 08 · Multi-modal models
#
# A multi-modal model reads several kinds of input at once. This notebook walks through
# `ml.multimodal`:
#
# 1. **Preprocessing** of each modality with the real tools: OpenCV and PIL for images and
#    video, librosa for audio, the model's own `tokenizer.json` for text.
# 2. **Cross-modal attention** on `F.scaled_dot_product_attention`, checked against the
#    textbook formula.
# 3. **Four fusion strategies** (early, middle, late, attention) trained on a small task that
#    needs image, text and audio together, compared with each other and with a model that
#    sees the image alone.
# 4. **Where the caption looks**: attention maps over the image, the attention mass on the
#    shape the caption names, and the one attention record every part of a model returns.
# 5. **Pretrained encoders** from Hugging Face folders (CLIP, Whisper) that transformers
#    writes here from seeded configs: preprocessing equal to their processors, a CLIP-style
#    model equal to `CLIPModel`, and its attention over image patches.
# 6. **Saving** a model with its config in the file, and the real MiniLM's attention over a
#    sentence.

# %%
import shutil
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import mlmf_lab as ml
from mlmf_lab.multimodal import demo, train
from mlmf_lab.plots import multimodal as mplots

torch.manual_seed(0)
work = Path(tempfile.mkdtemp())
mm = ml.multimodal

# %% [markdown]
# ## 1 · Preprocessing
#
# **Image.** Decode with OpenCV, resize with PIL so the short side fits (keeping the aspect
# ratio; the long side is truncated as Hugging Face's processors do), center-crop,
# normalize with the channel mean/std, and cut into ViT patches. PIL is what
# `CLIPImageProcessor` and `ViTImageProcessor` resize with, so section 5 reproduces them to
# the bit. The patch grid is kept so attention over patches can be drawn back onto the
# picture.

# %%
rng = np.random.default_rng(0)
sample = demo.make_sample(rng, demo.ShapesTask(source=(180, 240), size=224, patch=32))
import cv2  # noqa: E402

cv2.imwrite(str(work / "shapes.png"), sample.image[:, :, ::-1])
img_cfg = mm.ImagePreprocessing(size=224, patch=32)
images = mm.preprocess_images([work / "shapes.png"], img_cfg)
print("source", sample.image.shape, "-> pixels", tuple(images.pixels.shape),
      "patches", tuple(images.patches.shape), "grid", images.grid)

# %%
from mlmf_lab.multimodal.preprocess.image import denormalize  # noqa: E402

mplots.plot_patch_grid(denormalize(images.pixels[0], img_cfg), images.grid,
                       title=f"{images.grid[0]}x{images.grid[1]} patches of 32 px")

# %% [markdown]
# **Audio.** A 44.1 kHz stereo WAV file is loaded with librosa (resampled by soxr to
# 16 kHz, mixed to mono), cut into Hann-windowed frames of 25 ms every 10 ms, and turned
# into a 64-band log-mel spectrogram, normalized per clip. The spectrogram maths match
# `librosa.feature.melspectrogram` (the tests check it) but run on a whole padded batch.

# %%
sr = 44100
t = np.arange(int(1.5 * sr)) / sr
chirp = 0.4 * np.sin(2 * np.pi * (300 + 900 * t) * t)  # a rising tone
sf.write(work / "chirp.wav", np.stack([chirp, 0.8 * chirp], 1), sr)
aud_cfg = mm.AudioPreprocessing(sample_rate=16000, n_fft=400, hop=160, n_mels=64)
audio = mm.preprocess_audio([work / "chirp.wav"], aud_cfg)
print("mel", tuple(audio.mel.shape), "frames used", int(audio.mask.sum()),
      f"seconds {float(audio.seconds[0]):.2f}")
mplots.plot_mel(audio.mel[0].numpy(), aud_cfg.sample_rate, aud_cfg.hop, "log-mel of a chirp")

# %% [markdown]
# **Video.** Frames are read with OpenCV at a target rate (here 4 fps out of 20), chosen by
# their decoded timestamps (the frame shown at each sampling time, so a variable-rate video is
# sampled where it shows), every frame goes through the image pipeline, and the frames are
# grouped into clips of `clip_frames` every `stride` frames. Every sampled frame lands in a
# clip: the last clip is padded (and masked) when fewer frames are left. The test videos are
# MJPG in an AVI container (the OpenCV wheel has no H.264 encoder).

# %%
frames = []
for i in range(40):  # 2 s at 20 fps: a disc crossing the picture
    f = np.full((120, 160, 3), 30, np.uint8)
    cv2.circle(f, (10 + 4 * i, 60), 14, (230, 60, 40), -1)
    frames.append(f)
mm.write_video(work / "disc.avi", np.stack(frames), fps=20)
vid_cfg = mm.VideoPreprocessing(fps=4, clip_frames=3, stride=3,
                                image=mm.ImagePreprocessing(96, 16))
clips = mm.preprocess_video(work / "disc.avi", vid_cfg)
print("clips x frames:", tuple(clips.patches.shape[:2]), "patches per frame:",
      clips.patches.shape[2], "| frame mask:", clips.frame_mask.int().tolist())
strip = np.stack([denormalize(p, vid_cfg.image) for p in clips.pixels.flatten(0, 1)])
mplots.plot_frame_strip(strip, clips.times.flatten().tolist(),
                        "8 frames sampled at 4 fps in clips of 3 (the last one padded)")

# %% [markdown]
# **Text.** The MiniLM package ships its `tokenizer.json`; `tokenize` pads to the longest
# text (or to `max_length`), truncates, and returns the attention mask.

# %%
text = mm.tokenize(["Which shape is red?", "A tone names the colour of the shape."],
                   ml.examples.minilm_dir(), mm.TextPreprocessing(max_length=16))
for toks, ids, m in zip(text.tokens, text.input_ids, text.attention_mask):
    print(" ".join(f"{t}:{int(i)}" for t, i, k in zip(toks, ids, m) if k),
          f"(+{int((~m).sum())} padding)")

# %% [markdown]
# Bad input is reported, never a traceback from deep inside OpenCV or librosa:

# %%
(work / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
for call in (lambda: mm.preprocess_images([work / "broken.jpg"], img_cfg),
             lambda: mm.tokenize(["fine", ""], ml.examples.minilm_dir()),
             lambda: mm.ImagePreprocessing(size=100, patch=16)):
    try:
        call()
    except ml.MLMFError as e:
        print(type(e).__name__, "-", e)

# %% [markdown]
# ## 2 · Cross-modal attention
#
# `CrossModalAttention` lets the tokens of one modality (queries) read another's (keys and
# values). It runs on `F.scaled_dot_product_attention`; when asked it also returns the
# per-head weights for the views. Here it is checked against softmax(QKᵀ/√d)V written out,
# with a mask that hides some context tokens.

# %%
att = mm.CrossModalAttention(mm.CrossModalAttentionConfig(dim=32, heads=4)).eval()
x, ctx = torch.randn(2, 5, 32), torch.randn(2, 9, 32)
mask = torch.ones(2, 9, dtype=torch.bool)
mask[1, 6:] = False
with torch.no_grad():
    out, w = att(x, ctx, mask, output_attentions=True)
from mlmf_lab.multimodal.attention import merge_heads, split_heads  # noqa: E402

q, k, v = (split_heads(p(i), 4) for p, i in ((att.q, x), (att.k, ctx), (att.v, ctx)))
scores = q @ k.transpose(-2, -1) / 8 ** 0.5
scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
naive = att.out(merge_heads(scores.softmax(-1) @ v)).detach()
err = float((out - naive).abs().max())  # float rounding only: ~1e-7, depends on the CPU
print("sdpa matches the naive formula:", err < 1e-6,
      "| weight on hidden tokens:", float(w[1, :, :, 6:].sum()))

# %% [markdown]
# ## 3 · A task that needs every modality
#
# Each sample has an image with a red, a green and a blue shape (circle, square or triangle,
# repeats allowed) in a 3 x 3 grid, a short tone and a caption. The caption either names the
# colour ("which shape is red") or points at the tone, whose pitch encodes a colour (330 Hz
# red, 660 Hz green, 1320 Hz blue; a decoy otherwise). The answer is the shape of the object
# of that colour. Text and audio carry no shape at all, so alone they are at chance (1/3);
# the image alone can at best guess the most frequent shape (17/27 = 0.63). Everything goes
# through the pipelines above.

# %%
task = demo.ShapesTask()
few = demo.make_samples(4, seed=3, task=task)
fig = mplots.plot_attention_overlay(
    [s.image[:, 16:88] / 255 for s in few], [np.zeros((3, 3)) for _ in few],
    titles=[f"{s.caption}\n-> {demo.SHAPES[s.answer]}" for s in few])
fig

# %% [markdown]
# Train one small model per fusion strategy (same data, same seed, ~60k parameters each,
# a few hundred steps) and test on 512 held-out samples:
#
# - **early**: all tokens in one sequence through a shared transformer;
# - **middle**: cross-attention between the encoders after their first layer;
# - **late**: pooled outputs combined by a mean (learned weights and a learned gate are the
#   other late modes, `late_mode="weighted" | "gate"`);
# - **attention**: learned softmax weights across modalities, one set per sample;
#
# and, as the single-modality baseline, the same kind of model reading **the image alone**.
# The caption and the tone carry no shape at all, so a model reading only one of them is at
# chance (1/3) by construction; the image is the strong single modality, but without knowing
# which colour is asked for the best it can do is guess the most frequent shape, right
# 17/27 = 0.63 of the time.
#
# Training sums floats in an order that depends on the CPU, and 300 steps amplify the last
# bits, so the numbers from here on differ between machines; after each result a small
# cell checks what holds on any of them.

# %% tags=["nbval-ignore-output"]
from mlmf_lab.multimodal.config import FusionStrategy as FS  # noqa: E402

STRATEGIES = [("early", FS.EARLY, "mean"), ("middle", FS.MIDDLE, "mean"),
              ("late (mean)", FS.LATE, "mean"), ("attention", FS.ATTENTION, "mean")]
report = train.compare_fusions(STRATEGIES, steps=300, n_train=2048, n_test=512, seed=0,
                               alone=["image"])
report

# %% [markdown]
# One run is one draw: at this training length the same strategy lands far apart from one
# seed (data and initialization) to the next. Two more seeds, to see which differences
# survive:

# %% tags=["nbval-ignore-output"]
runs = [report] + [train.compare_fusions(STRATEGIES, steps=300, n_train=2048, n_test=512,
                                         seed=seed, alone=["image"]) for seed in (1, 2)]
labels = [r.strategy for r in report.results]
seeds = {label: [r.results[i].accuracy for r in runs] for i, label in enumerate(labels)}
mean = {label: float(np.mean(acc)) for label, acc in seeds.items()}
print("                seed 0  seed 1  seed 2   mean")
for label, acc in seeds.items():
    print(f"{label:14s}" + "".join(f"{a:8.3f}" for a in acc) + f"{mean[label]:8.3f}")

# %% [markdown]
# **Which fusions beat a single modality, and why.** The caption or the tone alone are at
# chance. To beat the image alone a model has to find *which* object the caption (or the
# tone) means and read that object's shape: bind a colour named in one modality to a place
# in another. Passing the 0.63 bound is the proof that it did, since no model that sees
# only the image can. In the runs stored here:
#
# - Only **middle** and **early** fusion pass the bound, each on one seed of three (by
#   about 0.12). Both can bind by attention: middle directly, the caption's tokens attending
#   to the image patches before anything is pooled (section 4 measures where they land);
#   early inside its shared blocks, from a fresh `[CLS]` token. At 300 steps, whether a run
#   finds the binding is the luck of the draw; on the other seeds they end near the image
#   alone.
# - **Late** and **attention** fusion pool each input to one vector first: the image vector
#   has to describe all three objects at once, and a mean (late) or one weight per input
#   (attention) cannot look inside it. They never pass the bound; on average attention
#   fusion is about as good as the image alone and late fusion below it (its mean also
#   dilutes the image with two inputs that carry no shape).
# - Averaged over the seeds the order is the one these mechanisms predict (middle, early,
#   the image alone, attention, late), but the spread between seeds is as large as the
#   gaps: a single run of this demo ranks the strategies by chance as much as by design.

# %%
best = {label: max(acc) for label, acc in seeds.items()}
print("every fusion beats chance on average:", all(mean[k] > 0.4 for k in labels[:4]))
print("the image alone never passes its 0.63 bound:",
      best["image alone"] < report.image_only + 0.04)
print("middle or early fusion passes it on some seed:",
      max(best["middle"], best["early"]) > report.image_only + 0.05)
print("late and attention fusion do not:",
      max(best["late (mean)"], best["attention"]) < report.image_only + 0.04)
print("late fusion is below the image alone on average:",
      mean["late (mean)"] < mean["image alone"])

# %%
mplots.plot_fusion_accuracy([r.strategy for r in report.results],
                            [r.accuracy for r in report.results], report.chance)

# %%
mplots.plot_losses(report.losses)

# %% [markdown]
# ## 4 · Where does the caption look?
#
# In the middle-fusion model the caption's tokens attend to the image patches. Averaged over
# heads and caption tokens, that attention is drawn over held-out images; the cyan box is the
# shape the caption means.

# %%
test = demo.make_dataset(512, seed=1, task=task)
middle = report.models["middle"]
maps = train.image_attention(middle, test)  # (N, 9)
idx = [i for i in range(40) if not bool(test.spoken[i])][:5]
raw = demo.make_samples(512, seed=1, task=task)
mplots.plot_attention_overlay(
    [raw[i].image[:, 16:88] / 255 for i in idx], [maps[i].view(3, 3).numpy() for i in idx],
    titles=[raw[i].caption for i in idx], targets=[int(test.target_cell[i]) for i in idx])

# %% tags=["nbval-ignore-output"]
mass = train.attention_mass(middle, test)
print(f"attention mass on the named shape's patch: {mass.target:.3f}")
print(f"on each other shape's patch (mean):        {mass.distractors:.3f}")
print(f"uniform baseline (1 / 9 patches):          {mass.uniform:.3f}")
print(f"ratio to uniform:                          {mass.ratio:.2f}x")

# %%
print("the named shape draws more attention than the other shapes and than uniform:",
      mass.target > mass.distractors and mass.target > mass.uniform)

# %% [markdown]
# That map is one of the **attention records** the model returns with
# `output_attentions=True`: one `AttentionMaps` per part that computes attention, each
# `(batch, layers, heads, queries, keys)` with a label per token (the words, `r1c2` for a
# patch, `0.42s` for an audio frame) and which input each stretch of keys comes from. The
# encoders' own blocks report theirs, and so does every fusion that attends (early fusion's
# shared sequence, middle fusion's cross-attention, attention fusion's weights over the
# inputs); late fusion computes none. Each record feeds `ml.views.AttentionView`.

# %%
with torch.no_grad():
    out = middle(test.inputs(slice(0, 4)), output_attentions=True)
for maps in out.attentions.values():
    print(maps)

# %% [markdown]
# A modality missing at inference is masked, not a crash. On the questions whose caption
# names the colour, the middle model still runs without the tone; it never saw a sample
# without one during training, so its accuracy drops, yet stays above chance (1/3):

# %% tags=["nbval-ignore-output"]
sub = test.subset(~test.spoken)
with_tone, without_tone = train.accuracy(middle, sub), train.accuracy(middle, sub, drop=["tone"])
print(f"with the tone:    {with_tone:.3f}")
print(f"without the tone: {without_tone:.3f}")

# %%
print("lower without the tone, yet above chance:", 1 / 3 < without_tone < with_tone)

# %% [markdown]
# ## 5 · Pretrained encoders from Hugging Face folders
#
# `ml.multimodal.load_encoder(folder)` builds an encoder on transformers' own classes from
# the folder's `config.json` (BERT and its relatives, CLIP's text and vision towers, ViT,
# Whisper's encoder), on the meta device, and fills it with `ml.load_into`: the weights stay
# memory-mapped. Buffers today's transformers no longer saves (`position_ids`) are rebuilt as
# `from_pretrained` does. Here transformers itself writes a small CLIP and a small Whisper
# from seeded configs, with their processors (nothing is downloaded; the weights are
# random, so what follows shows the machinery, not what a trained CLIP sees).

# %%
from transformers.utils import logging as hf_logging  # noqa: E402

from mlmf_lab.multimodal import tiny  # noqa: E402

hf_logging.disable_progress_bar()  # transformers' own save/load bars: noise here
clip_dir = tiny.tiny_clip(work / "clip", seed=0)
whisper_dir = tiny.tiny_whisper(work / "whisper", seed=0)
print("model types that load:", ", ".join(t for e in mm.HF_ENCODERS for t in e.model_types))
clip_prep, whisper_prep = mm.preprocessing_for(clip_dir), mm.preprocessing_for(whisper_dir)
clip_prep

# %% [markdown]
# `preprocessing_for(folder)` reads the processors' settings into the lab's records. Checked
# here against transformers' own `CLIPImageProcessor` (bicubic resize of the short side,
# truncated long side, center crop) and `WhisperFeatureExtractor` (padded to its window,
# log10 mel floored 8 below the maximum), and the folder's tokenizer:

# %%
from transformers import AutoTokenizer, CLIPImageProcessorPil, WhisperFeatureExtractor  # noqa: E402

shapes = demo.make_samples(4, seed=5, task=demo.ShapesTask(source=(60, 90)))
pictures = [s.image for s in shapes]
ours = mm.preprocess_images(pictures, clip_prep.image).pixels
theirs = CLIPImageProcessorPil.from_pretrained(clip_dir)(pictures, return_tensors="pt")
print("images, max |ours - CLIPImageProcessor|:",
      float((ours - theirs["pixel_values"]).abs().max()))
tones = [s.tone for s in shapes]
heard = mm.preprocess_audio([(t, 8000) for t in tones], whisper_prep.audio)
want = WhisperFeatureExtractor.from_pretrained(whisper_dir)(
    [mm.load_audio((t, 8000), whisper_prep.audio) for t in tones], sampling_rate=16000,
    return_tensors="pt")
print("audio, mean |ours - WhisperFeatureExtractor|:",
      f"{float((heard.mel - want['input_features']).abs().mean()):.1e}")
words = mm.tokenize([s.caption for s in shapes], clip_prep.text.tokenizer, clip_prep.text)
ids = AutoTokenizer.from_pretrained(clip_dir)([s.caption for s in shapes], padding=True,
                                              return_tensors="pt")["input_ids"]
print("text, ids equal to the folder's tokenizer:", torch.equal(words.input_ids, ids))

# %% [markdown]
# A CLIP-style dual encoder assembled from the folder: its two towers and the learned
# temperature. Against transformers' `CLIPModel` on the same inputs:

# %%
from transformers import CLIPModel  # noqa: E402

clip = mm.load_dual_encoder(clip_dir)
images = mm.preprocess_images(pictures, clip_prep.image)
with torch.no_grad():
    mine = clip(words, images)
    ref = CLIPModel.from_pretrained(clip_dir).eval()(
        input_ids=words.input_ids, attention_mask=words.attention_mask.long(),
        pixel_values=images.pixels)
for field in ("image_embeds", "text_embeds", "logits_per_image"):
    diff = float((getattr(mine, field) - getattr(ref, field)).abs().max())
    print(f"{field:17s} max |ours - CLIPModel| below 1e-5: {diff < 1e-5}")

# %% [markdown]
# The same folders as encoders of a multi-modal model (`encoder="pretrained"`): the caption
# through CLIP's text tower, the image through its vision tower, the tone through Whisper's
# encoder, each under a projection and one block of its own, with middle fusion. A kind
# that starts from random weights refuses `pretrained=` instead of ignoring it.

# %%
pretrained_cfg = mm.MultiModalConfig((
    mm.ModalityConfig("caption", "text", "pretrained", 32, 1, 2, pretrained=str(clip_dir),
                      preprocessing=clip_prep.text),
    mm.ModalityConfig("image", "image", "pretrained", 32, 1, 2, pretrained=str(clip_dir),
                      preprocessing=clip_prep.image),
    mm.ModalityConfig("tone", "audio", "pretrained", 32, 1, 2, pretrained=str(whisper_dir),
                      preprocessing=whisper_prep.audio)),
    fusion=FS.MIDDLE, num_classes=3, attention=mm.CrossModalAttentionConfig(32, 2))
torch.manual_seed(0)
assembled = mm.MultiModalModel(pretrained_cfg).eval()
assembled

# %%
try:
    mm.ModalityConfig("image", "image", "patch_transformer", preprocessing=clip_prep.image,
                      pretrained=str(clip_dir))
except ml.MLMFError as e:
    print(type(e).__name__, "-", e.message.replace(str(clip_dir), "<clip folder>"))

# %%
with torch.no_grad():
    seen = assembled({"caption": words, "image": images, "tone": heard}, output_attentions=True)
print(list(seen.attentions))
vision = seen.attentions["image.backbone"]
vision

# %% [markdown]
# The CLIP vision tower's attention over the image patches: its `[CLS]` token (query 0) in
# the last layer, averaged over heads, on the 4 x 4 patch grid of each picture. Below it, the
# same record in `AttentionView` (click a head, hover a token).

# %%
cls_maps = vision.weights[:, -1, :, 0, vision.patch_offset:].mean(1)  # (images, 16)
mplots.plot_attention_overlay(
    [denormalize(p, clip_prep.image) for p in images.pixels],
    [m.view(*vision.grid).numpy() for m in cls_maps], titles=[s.caption for s in shapes])

# %%
ml.views.AttentionView(**vision.view_args(0), image=denormalize(images.pixels[0],
                                                                 clip_prep.image))

# %% [markdown]
# Saved and loaded like any multi-modal model: the backbones travel in the file, and the
# buffers no file holds are rebuilt on loading.

# %%
saved = mm.save_multimodal(assembled, work / "assembled.safetensors")
again = mm.load_multimodal(saved)
inputs = {"caption": words, "image": images, "tone": heard}
with torch.no_grad():
    print("reloaded: identical logits:", torch.equal(again(inputs).logits,
                                                     assembled(inputs).logits))

# %% [markdown]
# ## 6 · Saving and loading
#
# `save_multimodal` writes the weights with the config (JSON) in the file's metadata, so the
# file alone rebuilds the model. `save_parts` writes one file per encoder; `load_parts` can
# assemble a model from encoders trained elsewhere.

# %%
path = mm.save_multimodal(middle, work / "middle.safetensors")
with ml.open_weights(path) as wf:
    print(len(wf), "tensors;", "config keys:", sorted(
        mm.MultiModalConfig.from_json(wf.metadata["mlmf.multimodal.config"]).as_dict()))
back = mm.load_multimodal(path)
same = torch.equal(back(test.inputs()).logits, middle(test.inputs()).logits)
parts = mm.save_parts(middle, work / "parts")
print("reloaded model gives identical logits:", same, "| parts:", sorted(parts))
back

# %% [markdown]
# ## 7 · The real MiniLM's attention over a sentence
#
# The MiniLM sentence encoder (6 layers, 12 heads) shipped with the lab is loaded from its
# `model.safetensors` onto the meta device and filled copy-free. Its attention maps show
# which words each word reads; the same folder can serve as the text branch of a
# multi-modal model (`ModalityConfig(..., encoder="pretrained", pretrained=<folder>)`, on
# transformers' `BertModel`).

# %%
from mlmf_lab.models.minilm import MiniLM  # noqa: E402

lm = MiniLM.from_pretrained(ml.examples.minilm_dir())
sent = mm.tokenize(["The red circle sits left of the blue square."], ml.examples.minilm_dir())
with torch.no_grad():
    _, att_maps = lm(sent.input_ids, sent.attention_mask.long(), output_attentions=True)
print(len(att_maps), "layers of", tuple(att_maps[0].shape))
mplots.plot_token_attention(sent.tokens[0], att_maps[2][0].mean(0).numpy(),
                            "MiniLM layer 3, mean over 12 heads")

# %% [markdown]
# Clean up: remove the scratch folder this notebook wrote into.

# %%
shutil.rmtree(work)
