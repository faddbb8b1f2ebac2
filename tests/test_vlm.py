"""Image inputs, the shipped image tasks, tiny_glm4v (a real Glm4vForConditionalGeneration) scoring and
generating with images, and projector-only training (lm-eval's hf-multimodal against the harness on the same
folder: tests/test_vlm_harness.py)."""

from __future__ import annotations

import base64
import random
import struct
import zlib

import pytest
import torch

from autoglm_bench.config import ModelConfig, compose
from autoglm_bench.data.images import ImageError, ImageLimits, data_url, encode_png, image_digest, load_image
from autoglm_bench.data.tasks import load_task

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models on a shared CPU: a second thread only waits
IMAGE = "<|begin_of_image|><|image|><|end_of_image|>"


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels, with (almost) no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def shapes():
    sizes = ["task.options.train_size=40", "task.options.eval_size=40"]  # a small folder: quick to write and read
    task = load_task(compose(["task=toy_shapes", "model=tiny_glm4v", *sizes]).task, None)
    return task, task.hook.image_root(None)


@pytest.fixture(scope="module")
def glm4v(model_cache):
    from transformers import AutoModelForImageTextToText

    from autoglm_bench.lm.tiny_glm4v import build_tiny_glm4v
    from autoglm_bench.lm.vlm import load_processor

    folder = build_tiny_glm4v(ModelConfig(name="tiny_glm4v", kind="tiny_glm4v"))
    return folder, load_processor(str(folder), "glm4v"), AutoModelForImageTextToText.from_pretrained(folder).eval()


def test_every_image_form_gives_the_same_pixels(tmp_path):
    from PIL import Image

    image = Image.new("RGB", (5, 3), (10, 200, 30))
    (tmp_path / "pics").mkdir()
    image.save(tmp_path / "pics" / "a.png")
    png = encode_png(image)
    forms = ["pics/a.png", png, base64.b64encode(png).decode(), data_url(image), {"bytes": png, "path": None}, image]
    digests = {image_digest(load_image(form, root=tmp_path)) for form in forms}
    assert digests == {image_digest(image)}
    assert image_digest(Image.new("RGB", (5, 3), (10, 200, 31))) != image_digest(image)


@pytest.mark.parametrize(
    "value, limits, message",
    [
        (b"plain text, not a picture", None, "image (bytes): not an image; expected PNG"),
        ("truncated", None, "truncated or corrupt image"),
        (png_header(20_000, 20_000), None, "400,000,000 pixels; at most 36,000,000 are allowed"),
        (png_header(7_000, 7_000), None, "7,000 x 7,000 pixels (49,000,000); at most 36,000,000"),
        (png_header(64, 64), ImageLimits(max_bytes=10), "bytes; at most 10 are allowed"),
        ("https://example.com/cat.png", None, "URLs are never fetched"),
        ("file:///etc/passwd", None, "URLs are never fetched"),
        ("../outside.png", None, "is outside the data folder"),
        ("/etc/passwd", None, "is outside the data folder"),
        ("missing.png", None, "image file not found"),
        ("data:text/plain;base64,aGVsbG8=", None, "is not an image"),
    ],
)
def test_bad_image_is_refused_with_one_line(value, limits, message, tmp_path):
    from PIL import Image

    if value == "truncated":
        png = encode_png(Image.frombytes("RGB", (32, 32), random.Random(0).randbytes(32 * 32 * 3)))
        value = png[: len(png) // 2]
    (tmp_path / "data").mkdir()
    (tmp_path / "outside.png").write_bytes(encode_png(Image.new("RGB", (2, 2))))
    with pytest.raises(ImageError) as exc:
        load_image(value, root=tmp_path / "data", limits=limits)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_toy_shapes_is_deterministic_balanced_and_an_imagefolder(shapes):
    import datasets

    task, root = shapes
    rows = task.rows["eval"]
    assert len(rows) == 40 and {r["kind"] for r in rows} == {"shape", "colour", "count", "position"}
    # each kind 10 times, and within a kind the answers in turn: 3, 3, 2, 2
    assert [sum(r["label"] == j and r["kind"] == "colour" for r in rows) for j in range(4)] == [3, 3, 2, 2]
    again = task.hook.generate("validation")  # a second generation from the same seed: the same pictures
    for row, (image, fresh) in zip(rows, again):
        assert image_digest(load_image(row["image"], root)) == image_digest(image)
        assert fresh == {k: v for k, v in row.items() if k != "image" and not k.startswith("_")}
    other = load_task(
        compose(["task=toy_shapes", "model=tiny_glm4v", "task.options.seed=1", "task.options.eval_size=8"]).task, None
    )
    assert [r["answer"] for r in other.rows["eval"]] != [r["answer"] for r in rows[:8]]
    folder = datasets.load_dataset("imagefolder", data_dir=str(root), split="validation")
    assert folder[0]["answer"] == rows[0]["answer"] and folder[0]["image"].size == (64, 64)


def test_digits_has_a_fixed_split_of_sklearn_images():
    task = load_task(compose(["task=digits", "model=tiny_glm4v"]).task, None)
    train, test = task.rows["train"], task.rows["eval"]
    assert (len(train), len(test)) == (1297, 500)
    assert not {r["index"] for r in train} & {r["index"] for r in test}
    assert sorted({r["label"] for r in test}) == list(range(10))
    image = load_image(test[0]["image"], task.hook.image_root(None))
    assert image.size == (32, 32) and test[0]["_id"] == f"test-{test[0]['index']}"


def test_tiny_glm4v_is_deterministic_from_its_seed(glm4v, tmp_path):
    from autoglm_bench.lm.fingerprint import file_digest
    from autoglm_bench.lm.tiny_glm4v import TinyVisionConfig, _write_tiny_glm4v

    folder, _, model = glm4v
    assert model.config.model_type == "glm4v" and model.config.vision_config.depth == 1
    for seed in (0, 1):
        (tmp_path / str(seed)).mkdir()
        _write_tiny_glm4v(
            ModelConfig(name="t", kind="tiny_glm4v", seed=seed), TinyVisionConfig(), tmp_path / str(seed), None
        )
    same = file_digest(tmp_path / "0" / "model.safetensors") == file_digest(folder / "model.safetensors")
    assert same and file_digest(tmp_path / "1" / "model.safetensors") != file_digest(folder / "model.safetensors")


def test_a_text_glm_carries_over_as_its_language_model(model_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Glm4vForConditionalGeneration

    from autoglm_bench.lm.tiny_glm import build_tiny_glm
    from autoglm_bench.lm.tiny_glm4v import build_tiny_glm4v

    text = build_tiny_glm(ModelConfig(name="tiny_glm", kind="tiny_glm", seed=3))
    both = build_tiny_glm4v(ModelConfig(name="tiny_glm4v", kind="tiny_glm4v"), language_model=text)
    ids = AutoTokenizer.from_pretrained(text)("the film was great .", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        vlm = Glm4vForConditionalGeneration.from_pretrained(both)(input_ids=ids).logits
        lm = AutoModelForCausalLM.from_pretrained(text)(input_ids=ids).logits
    assert torch.equal(vlm[..., : lm.shape[-1]], lm)


def test_choices_are_scored_with_the_image_as_a_full_forward_pass_scores_them(glm4v, shapes):
    from autoglm_bench.lm.vlm import image_choice_loglikelihoods

    _, processor, model = glm4v
    task, root = shapes
    row = next(r for r in task.rows["eval"] if r["kind"] == "position")  # two-token choices
    image = load_image(row["image"], root)
    context, choices = IMAGE + row["question"] + "\nAnswer:", [" " + o for o in row["options"]]
    scores = image_choice_loglikelihoods(model, processor, context, [image], choices)
    assert scores == image_choice_loglikelihoods(model, processor, context, [image], choices)
    reference = []
    for choice in choices:  # the plain way: the whole text through the processor, one choice at a time
        n_ctx = processor(text=[context], images=[image], return_tensors="pt")["input_ids"].shape[1]
        enc = processor(text=[context + choice], images=[image], return_tensors="pt")
        with torch.no_grad():
            logprobs = torch.log_softmax(model(**enc).logits[0], -1)
        tokens = enc["input_ids"][0, n_ctx:]
        assert len(tokens) >= 2
        reference.append(float(logprobs[n_ctx - 1 : -1].gather(1, tokens[:, None]).sum()))
    assert [s for s, _ in scores] == pytest.approx(reference, abs=1e-4)
    other = next(r for r in task.rows["eval"] if r["kind"] == "colour")
    elsewhere = image_choice_loglikelihoods(model, processor, context, [load_image(other["image"], root)], choices)
    assert all(abs(a[0] - b[0]) > 1e-4 for a, b in zip(scores, elsewhere))  # the image is read


def test_greedy_generation_with_an_image(glm4v, shapes):
    _, processor, model = glm4v
    task, root = shapes
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": task.rows["eval"][0]["question"]}]}
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == f"[gMASK]<sop><|user|>\n{IMAGE}{task.rows['eval'][0]['question']}<|assistant|>\n"
    enc = processor(text=[text], images=[load_image(task.rows["eval"][0]["image"], root)], return_tensors="pt")
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 16  # 64 x 64, 8 x 8 patches, 2 x 2 merged
    outs = [model.generate(**enc, max_new_tokens=4, do_sample=False) for _ in range(2)]
    assert torch.equal(outs[0], outs[1]) and outs[0].shape[1] == enc["input_ids"].shape[1] + 4


def test_projector_training_leaves_encoder_and_language_model_bit_identical(glm4v, shapes):
    import copy

    from autoglm_bench.bench.shapes_projector import train_projector
    from autoglm_bench.lm.vlm import PROJECTORS

    _, processor, model = glm4v
    model = copy.deepcopy(model)
    task, root = shapes
    rows = task.rows["train"][:8]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    train_projector(model, processor, rows, [load_image(r["image"], root) for r in rows], 3, 1e-2, 4,
                    on_step=lambda step, loss: losses.append(loss))  # fmt: skip
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(n.startswith(tuple(m + "." for m in PROJECTORS["glm4v"])) for n in changed)
    assert {n.rsplit(".", 1)[0] for n in changed} >= {"model.visual.downsample", "model.visual.merger.down_proj"}
    assert len(losses) == 3 and all(p.grad is None for n, p in model.named_parameters() if n not in changed)


def test_an_image_task_is_not_scored_by_a_text_model():
    from autoglm_bench.config import ConfigError

    with pytest.raises(
        ConfigError, match="task 'toy_shapes' has images \\(image\\); model 'tiny_glm' .* reads text only"
    ):
        compose(["task=toy_shapes", "model=tiny_glm", "limit=2"])


def test_a_few_shot_prefix_with_an_image_is_reusable_as_a_kv_cache(glm4v, shapes):
    """The shared-prefix trick holds with images: a demo (its image included) run once into a KV cache, then
    the query (its own image) on top, with positions sliced from the whole sequence's 3-D rotary positions,
    gives the logits of the whole sequence in one pass."""
    _, processor, model = glm4v
    task, root = shapes
    demo, query = task.rows["eval"][:2]
    prefix = f"{IMAGE}{demo['question']}\nAnswer: {demo['answer']}\n\n"
    images = [load_image(demo["image"], root), load_image(query["image"], root)]
    whole = processor(text=[prefix + IMAGE + query["question"] + "\nAnswer:"], images=images, return_tensors="pt")
    head = processor(text=[prefix], images=images[:1], return_tensors="pt")
    n = head["input_ids"].shape[1]
    assert torch.equal(whole["input_ids"][:, :n], head["input_ids"])
    positions, _ = model.model.get_rope_index(whole["input_ids"], whole["mm_token_type_ids"], whole["image_grid_thw"])
    with torch.no_grad():
        reference = model(**whole).logits[:, n:]
        cached = model(**head, position_ids=positions[:, :, :n], use_cache=True)
        cache = cached.get("cache", None) or cached.get("past_key_values")
        rest = model(
            input_ids=whole["input_ids"][:, n:],
            pixel_values=processor.image_processor(images=images[1:], return_tensors="pt")["pixel_values"],
            image_grid_thw=whole["image_grid_thw"][1:],
            position_ids=positions[:, :, n:],
            attention_mask=whole["attention_mask"],
            cache=cache,
        )
    assert torch.allclose(rest.logits, reference, atol=1e-5)
