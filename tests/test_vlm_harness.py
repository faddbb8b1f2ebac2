"""Image tasks through the harness: tiny_glm4v on toy_shapes by method=evaluate (choices and generation),
method=prompt_search (demos with their images), method=finetune (peft=projector learns and leaves the rest
bit-identical; LoRA on the language model; full), the service's image inputs, and chartqa's local files."""

from __future__ import annotations

import base64
import json

import pytest
import torch

from autoglm_bench.config import compose
from autoglm_bench.data.images import ImageText, data_url, encode_png, load_image

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models on a shared CPU: a second thread only waits
SMALL = ["task.options.train_size=40", "task.options.eval_size=12", "dev_size=8", "threads=1"]
BASE = ["task=toy_shapes", "model=tiny_glm4v", *SMALL]


def test_evaluate_scores_each_choice_with_its_image_and_caches_by_image_digest(tmp_path):
    from autoglm_bench.lm import RequestCache, load
    from autoglm_bench.lm.vlm import image_choice_loglikelihoods
    from autoglm_bench.methods.evaluate import run_evaluate

    run = compose([*BASE, "prompt.k_shot=1", f"method.cache_path={tmp_path / 'cache.sqlite'}"])
    record = run_evaluate(run)
    assert len(record["predictions"]) == 12 and record["prompt_example"].count("<image>") == 2  # demo + query
    assert record["cost"]["examples_scored"] == 20
    again = run_evaluate(run)
    assert again["cost"]["examples_scored"] == 0 and again["predictions"] == record["predictions"]

    lm = load(run.model)
    first = record["predictions"][0]
    from autoglm_bench.data.splits import split_task
    from autoglm_bench.data.tasks import load_task

    task = load_task(run.task, None)
    splits = split_task(task, run.split_seed, run.dev_size, run.limit)
    demo = splits.view(task, splits.test)  # the same one demo for every row (fewshot_mode=fixed)
    from autoglm_bench.prompts import select_demos

    (d,) = select_demos(demo, run.prompt, run.seed)
    row = splits.test[0]
    images = [load_image(r["image"], r["_image_root"]) for r in (d, row)]
    placeholder = lm.placeholder()
    context = f"{placeholder}{d['question']}\nAnswer: {d['answer']}\n\n{placeholder}{row['question']}\nAnswer:"
    direct = image_choice_loglikelihoods(lm.model, lm.processor, context, images, [" " + o for o in row["options"]])
    assert first["scores"] == pytest.approx([s for s, _ in direct], abs=1e-5)

    other = ImageText("<image>same text", (images[0],)), ImageText("<image>same text", (images[1],))
    keys = {RequestCache.key("fp", ["loglikelihood", "batched", ctx, [" red"]]) for ctx in other}
    assert len(keys) == 2  # same text, other pixels: another request


def test_generation_with_an_image_is_the_models_greedy_continuation():
    from autoglm_bench.lm import load
    from autoglm_bench.methods.evaluate import run_evaluate

    gen = ["task.type=generation", "task.target='{{ answer }}'", "task.metrics=[exact_match]", "limit=3"]
    run = compose([*BASE, *gen, "task.generation.max_new_tokens=3", "task.generation.until=[Q]", "method.cache=false"])
    record = run_evaluate(run, score_dev=False)
    lm = load(run.model)
    from autoglm_bench.data.splits import split_task
    from autoglm_bench.data.tasks import load_task

    task = load_task(run.task, None)
    for p, row in zip(record["predictions"], split_task(task, 0, 8, 3).test):
        image = load_image(row["image"], row["_image_root"])
        enc = lm.processor(text=[f"{lm.placeholder()}{row['question']}\nAnswer:"], images=[image], return_tensors="pt")
        ids = lm.model.generate(**enc, max_new_tokens=3, do_sample=False)[0, enc["input_ids"].shape[1] :]
        assert p["output"] == lm.processor.tokenizer.decode(ids, skip_special_tokens=True).split("Q")[0]
    assert set(record["metrics"]) == {"exact_match"}


def test_prompt_search_tries_image_demos_and_reports_test_rows_it_never_selected_on(tmp_path):
    from autoglm_bench.methods.prompt_search.study import run_prompt_search

    space = ["search.space.k_shot=[0,1]", "search.space.demo_selection=[random]", "search.space.demo_order=[selected]"]
    run = compose([*BASE, "method=prompt_search", "search=random", "search.n_trials=3", "search.pruner=none", *space])
    record = run_prompt_search(run, tmp_path)
    assert len(record["predictions"]) == 12 and 0.0 <= record["metrics"]["acc"] <= 1.0
    assert isinstance(record["prompt_example"], str) and "<image>" in record["prompt_example"]  # JSON: its text
    test_ids = set(record["splits"]["test_ids"])
    assert test_ids.isdisjoint(record["splits"]["dev_ids"])


@pytest.fixture(scope="module")
def projector_run(tmp_path_factory):
    """tiny_glm4v whose language model first learnt colour questions from words (model.language_model=
    shapes_text), its projector alone trained on toy_shapes colour questions through method=finetune."""
    from autoglm_bench.methods.evaluate import run_evaluate
    from autoglm_bench.methods.finetune.training import finetune

    args = ["task=toy_shapes", "model=tiny_glm4v", "model.language_model=shapes_text", "threads=1",
            "task.options.questions=[colour]", "task.options.eval_size=40", "dev_size=40"]  # fmt: skip
    untrained = run_evaluate(compose([*args, "method.cache=false"]), score_dev=False)
    train = ["method=finetune", "peft=projector", "optim.lr=5e-3", "optim.weight_decay=0", "method.batch_size=16",
             "trainer.max_epochs=3", "method.train_size=160", "trainer.checkpoint=false"]  # fmt: skip
    run_dir = tmp_path_factory.mktemp("projector")
    return untrained, finetune(compose([*args, *train]), run_dir), run_dir


def test_projector_learns_colours_from_chance(projector_run):
    untrained, record, _ = projector_run
    assert untrained["metrics"]["acc"] <= 0.5  # four colours: chance is 0.25
    assert record["dev_metrics"]["acc"] >= 0.9 and record["metrics"]["acc"] >= 0.9
    assert (
        record["training"]["peft"] == "projector"
        and record["training"]["trainable_params"] < 0.5 * (record["training"]["total_params"])
    )


def test_projector_training_leaves_vision_encoder_and_language_model_bit_identical(projector_run):
    from safetensors.torch import load_file

    from autoglm_bench.config import ModelConfig
    from autoglm_bench.lm.hf_vlm import model_path

    _, record, run_dir = projector_run
    before = load_file(f"{model_path(ModelConfig(name='t', kind='tiny_glm4v', language_model='shapes_text'))}"
                       "/model.safetensors")  # fmt: skip
    after = load_file(run_dir / "model" / "model.safetensors")
    projector = ("model.visual.downsample.", "model.visual.merger.")
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(n.startswith(projector) for n in changed)
    assert any(n.startswith("model.visual.blocks.") for n in before)  # the encoder is there, and unchanged


def test_lm_eval_hf_multimodal_gives_what_the_harness_gives_row_for_row(projector_run, tmp_path):
    """lm-eval 0.4.13's hf-multimodal loads a tiny_glm4v folder (once AutoProcessor knows the image-only GLM-4V
    processor) and, on a local task file over the same toy_shapes images, gives the prompts (token for token),
    generations, extracted answers (its regex filter, our answer_pattern), per-row exact_match and aggregate that
    method=evaluate gives. The folder is the projector-trained tiny_glm4v (projector_run), whose generations
    are right on some rows, so the metric is not a trivial zero on both sides."""
    from lm_eval import simple_evaluate
    from lm_eval.models.hf_vlms import HFMultimodalLM
    from lm_eval.tasks import TaskManager

    from autoglm_bench.data.prepare import prepare
    from autoglm_bench.lm import load
    from autoglm_bench.lm.hf_vlm import model_path
    from autoglm_bench.lm.vlm import register_processors
    from autoglm_bench.methods.evaluate import run_evaluate
    from autoglm_bench.prompts import example_inputs

    _, _, run_dir = projector_run
    gen = ["task.type=generation", "task.target='{{ answer }}'", "task.metrics=[exact_match]",
           "task.generation.max_new_tokens=4"]  # fmt: skip
    args = ["task=toy_shapes", "model=hf_vlm", f"model.path={run_dir / 'model'}", "limit=12", "dev_size=8",
            "task.options.questions=[colour]", "task.options.eval_size=40", "threads=1",
            "method.cache=false"]  # fmt: skip
    run = compose([*args, *gen])
    run.task.generation.until = ["\n"]  # (a newline or a backslash in a command-line override is awkward to quote)
    run.task.answer_pattern = r"(\w+)"  # the first word
    record = run_evaluate(run, score_dev=False)
    prep = prepare(run)
    lm = load(run.model)
    ours = [lm.inputs(c) for c in example_inputs(run.task, prep.examples("test", run.prompt, run.seed))]

    # the same prompt on both sides: lm-eval writes <image> as the bare image token, we as GLM-4V's chat template
    # writes an image part; the task file puts GLM-4V's begin/end tokens around lm-eval's <image>
    spec = {
        "task": "toy_shapes_gen",
        "dataset_path": "imagefolder",
        "dataset_kwargs": {"data_dir": str(prep.task.hook.image_root(None))},
        "test_split": "validation",
        "output_type": "generate_until",
        "doc_to_image": ["image"],
        "doc_to_text": "<|begin_of_image|><image><|end_of_image|>{{question}}\nAnswer:",
        "doc_to_target": "answer",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 4, "do_sample": False},
        "filter_list": [
            {"name": "word", "filter": [{"function": "regex", "regex_pattern": r"(\w+)"}, {"function": "take_first"}]}
        ],  # fmt: skip
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    (tmp_path / "toy_shapes_gen.yaml").write_text(json.dumps(spec))
    register_processors()
    theirs = HFMultimodalLM(
        pretrained=model_path(run.model), batch_size=1, device="cpu", dtype="float32", max_length=256
    )
    assert type(theirs.processor).__name__ == "Glm4vImageTextProcessor" and theirs.image_token == "<|image|>"
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    out = simple_evaluate(model=theirs, tasks=["toy_shapes_gen"], task_manager=manager, limit=12, log_samples=True)
    samples = sorted(out["samples"]["toy_shapes_gen"], key=lambda s: s["doc_id"])

    assert len(samples) == len(record["predictions"]) == 12
    for sample, p, (text, images) in zip(samples, record["predictions"], ours):
        assert p["id"] == f"validation-{sample['doc_id']}" and p["target"] == sample["target"]
        context = sample["arguments"][0][0]
        assert context.replace("<image>", theirs.image_token) == text
        their_ids = theirs.tok_batch_multimodal_encode([context], [images])["input_ids"]
        assert torch.equal(their_ids, lm.encode(text, images)["input_ids"])
        assert (sample["resps"][0][0], sample["filtered_resps"][0]) == (p["output"], p["prediction"])
        assert sample["exact_match"] == float(p["prediction"] == p["target"])
    per_row = [s["exact_match"] for s in samples]
    assert 0 < sum(per_row) < len(per_row)  # right and wrong rows: the comparison can tell them apart
    assert out["results"]["toy_shapes_gen"]["exact_match,word"] == pytest.approx(record["metrics"]["exact_match"])


def test_the_finetune_method_stays_a_function_after_its_modules_load():
    """methods.method_of("finetune").run is the method's function even once all its submodules have been
    imported (a multirun's second job calls it again; it once found a submodule named run there)."""
    import autoglm_bench.methods.finetune.hpo  # noqa: F401
    import autoglm_bench.methods.finetune.training  # noqa: F401
    from autoglm_bench.methods import method_of

    assert callable(method_of("finetune").run)


@pytest.mark.parametrize("peft", ["lora", "full"])
def test_lora_on_the_language_model_and_full_fine_tuning_run_end_to_end(peft, tmp_path):
    from autoglm_bench.lm.adapters import load_for_training
    from autoglm_bench.methods.finetune.training import finetune

    run = compose(
        [
            *BASE,
            "method=finetune",
            f"peft={peft}",
            "trainer.max_steps=2",
            "trainer.max_epochs=5",
            "method.batch_size=4",
            "limit=4",
        ]
    )
    model, _ = load_for_training(run.model, run.peft)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if peft == "lora":
        assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    else:
        assert len(trainable) == len(list(model.parameters()))
    record = finetune(run, tmp_path)
    assert record["training"]["optimizer_steps"] == 2 and len(record["predictions"]) == 4


# ---------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def image_server(model_cache):
    from autoglm_bench.serve.server import ServerThread
    from autoglm_bench.serve.service import Service

    args = [*BASE, "limit=6"]
    srv = ServerThread(Service(compose(args), args))
    yield srv, compose(args)
    srv.stop()


def test_classify_with_an_image_equals_the_harness_prediction(image_server):
    import httpx

    from autoglm_bench.data.splits import split_task
    from autoglm_bench.data.tasks import load_task
    from autoglm_bench.methods.evaluate import run_evaluate

    srv, run = image_server
    record = run_evaluate(run, score_dev=False)
    task = load_task(run.task, None)
    rows = split_task(task, run.split_seed, run.dev_size, run.limit).test
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        for row, expected in zip(rows, record["predictions"]):
            public = {k: v for k, v in row.items() if not k.startswith("_")}
            image = data_url(load_image(row["image"], row["_image_root"]))
            out = client.post("/classify", json={"input": {**public, "image": image}})
            assert out.status_code == 200, out.text
            assert out.json()["prediction"] == expected["prediction"]
            assert out.json()["loglikelihoods"] == pytest.approx(expected["scores"], abs=1e-4)
        part = {
            "type": "image_url",
            "image_url": {"url": data_url(load_image(rows[0]["image"], rows[0]["_image_root"]))},
        }
        chat = {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "Colour?"}]}], "max_tokens": 3}
        answer = client.post("/v1/chat/completions", json=chat)
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 3


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "kind, status, reason",
    [
        ("text", 422, "not an image"),
        ("truncated", 422, "truncated or corrupt image"),
        ("huge", 413, "400,000,000 pixels; at most 16,000,000"),
        ("remote", 422, "URLs are never fetched"),
        ("path", 422, "paths are not read"),
    ],
)
def test_bad_images_are_refused_with_one_line(image_server, kind, status, reason):
    import random

    import httpx
    from PIL import Image

    png = encode_png(Image.frombytes("RGB", (32, 32), random.Random(0).randbytes(32 * 32 * 3)))
    value = {
        "text": _b64(b"this is plain text, not a picture at all"),
        "truncated": "data:image/png;base64," + _b64(png[: len(png) // 2]),
        "huge": _b64(_png_header(20_000, 20_000)),
        "remote": "https://example.com/cat.png",
        "path": "validation/00000.png",
    }[kind]
    srv, _ = image_server
    row = {"question": "What colour is the shape?", "options": ["red", "green", "blue", "yellow"], "image": value}
    part = {"type": "image_url", "image_url": {"url": value}}
    chat = {"messages": [{"role": "user", "content": [part, {"type": "text", "text": "Colour?"}]}]}
    with httpx.Client(base_url=srv.url, timeout=60) as client:
        for path, body in (("/classify", {"input": row}), ("/v1/chat/completions", chat)):
            out = client.post(path, json=body)
            assert out.status_code == status and reason in out.json()["error"], (path, out.text)
            assert "\n" not in out.json()["error"] and list(out.json()) == ["error"]
        assert client.get("/health").status_code == 200


def test_chartqa_reads_a_local_jsonl_with_images_and_scores_as_lm_eval(tmp_path):
    from PIL import Image

    from autoglm_bench.methods.evaluate import run_evaluate

    folder = tmp_path / "chartqa"
    folder.mkdir()
    rows = []
    for i, (colour, answer) in enumerate([("red", "12"), ("blue", "7.5"), ("green", "Yes")]):
        rows.append({"image": _b64(encode_png(Image.new("RGB", (48, 40), colour))), "query": f"Value {i}?",
                     "label": [answer], "type": "human_test"})  # fmt: skip
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = compose(["task=chartqa", "model=tiny_glm4v", f"data_dir={tmp_path}", "task.generation.max_new_tokens=4",
                   "method.cache=false", "threads=1", "dev_size=0"])  # fmt: skip
    record = run_evaluate(run, score_dev=False)
    assert len(record["predictions"]) == 3
    assert set(record["metrics"]) >= {"exact_match", "relaxed_accuracy", "anywhere_accuracy"}
    assert record["prompt_example"].startswith("<image>Value 0?\nAnalyze the image")


@pytest.mark.parametrize(
    "generation, target",
    [
        ("The bars show it.\nFinal Answer: 12", "12"),
        ("Final Answer: 12.4", "12"),  # within 5%: relaxed only
        ("Final Answer: 45%", "0.45"),
        ("**Answer:** yes.", "Yes"),
        ("So the total is 1,200 in all", "1200"),
        ("the answer was Red, clearly", "Red"),
        ("FINAL ANSWER: B", "b"),
        ("nothing here", "7"),
    ],
)
def test_chartqa_metrics_equal_lm_evals(generation, target):
    """Each of our ChartQA metrics against lm-eval 0.4.13's own functions on the same strings."""
    from lm_eval.tasks.chartqa import utils

    from autoglm_bench.data.chartqa import anywhere, exact_match, relaxed_accuracy

    ours = {"exact_match": exact_match, "relaxed_accuracy": relaxed_accuracy, "anywhere_accuracy": anywhere}
    for name, fn in ours.items():
        theirs = getattr(utils, name)([target], [generation])
        assert fn(generation, target) == (theirs or {name: 0.0})[name], name
