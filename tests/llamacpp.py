"""llama.cpp itself, for the tests: llama-cpp-python and llama.cpp's own converter.

Both run in a child process. llama.cpp links the system's OpenMP runtime, and a second
runtime beside torch's makes the lab's int8 kernel stand down for the rest of the process
(``quant.native.int8_vnni``); a crash in C would also take the test run with it.

``make install`` builds llama-cpp-python from source (pinned in ``constraints.txt``) and puts
llama.cpp's converter, from the same source package, in ``.venv/llama-src``; the converter's
tokenizer code imports sentencepiece, installed apart in ``.venv/llama-ref`` (it bundles a
third OpenMP runtime, so it stays out of the venv). Nothing is downloaded at test time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

VENV = Path(sys.prefix)
CONVERTER = VENV / "llama-src" / "convert_hf_to_gguf.py"
REF_PATH = VENV / "llama-ref"  # sentencepiece, for the converter only
TIMEOUT = 300


def _child(job: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.npz"
        job = {**job, "out": str(out)}
        run = subprocess.run([sys.executable, __file__, json.dumps(job)], capture_output=True,
                             text=True, timeout=TIMEOUT, env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        with np.load(out, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}


def logits(path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's logits for every position of ``tokens`` (an f32 KV cache, 2 threads)."""
    return _child({"op": "logits", "path": str(path), "tokens": tokens})["logits"]


def embeddings(path: Path, tokens: list[int]) -> np.ndarray:
    """llama.cpp's output embedding of each token (an encoder without pooling)."""
    return _child({"op": "embeddings", "path": str(path), "tokens": tokens})["embeddings"]


def tokenize(path: Path, texts: list[str]) -> list[list[int]]:
    """llama.cpp's tokens for each text (BOS added as the file says)."""
    out = _child({"op": "tokenize", "path": str(path), "texts": texts})
    return [out[str(i)].tolist() for i in range(len(texts))]


def quantize(src: Path, dst: Path, ftype: str) -> None:
    """llama.cpp's quantizer (llama-quantize), every tensor to ``ftype`` (``--pure``)."""
    _child({"op": "quantize", "src": str(src), "dst": str(dst), "ftype": ftype})


# llama.cpp's converter names a byte-level BPE pre-tokenizer by hashing its tokens on a test
# text and refuses one it does not know, as the tiny tokenizers made by the tests are; told
# the name, the run is otherwise the converter's own.
NAMED_PRE = """import runpy, sys
sys.path[:0] = [{src!r}, {src!r} + "/gguf-py"]
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: {pre!r}
sys.argv = {argv!r}
runpy.run_path({script!r}, run_name="__main__")
"""


def reference_convert(folder: Path, dst: Path, outtype: str, pre: str | None = None) -> None:
    """llama.cpp's ``convert_hf_to_gguf.py`` on ``folder`` (its own gguf-py, as shipped);
    ``pre`` names the byte-level pre-tokenizer for it (see ``NAMED_PRE``)."""
    assert CONVERTER.is_file(), f"{CONVERTER} is missing: run `make install`"
    env = {**os.environ, "PYTHONPATH": str(REF_PATH)}
    argv = [str(CONVERTER), str(folder), "--outtype", outtype, "--outfile", str(dst)]
    if pre is not None:
        code = NAMED_PRE.format(src=str(CONVERTER.parent), pre=pre, argv=argv,
                                script=str(CONVERTER))
        argv = ["-c", code]
    run = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                         timeout=TIMEOUT, env=env)
    assert run.returncode == 0, run.stderr[-3000:]


# -- the child -------------------------------------------------------------------------------
def _open(path: str, **kw: Any) -> Any:
    import llama_cpp

    return llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=256, n_threads=2, verbose=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, **kw)


def _main(job: dict[str, Any]) -> dict[str, np.ndarray]:
    import llama_cpp

    op = job["op"]
    if op == "logits":
        llm = _open(job["path"], logits_all=True)
        llm.eval(job["tokens"])
        return {"logits": np.array(llm.scores[: len(job["tokens"])], dtype=np.float32)}
    if op == "embeddings":  # Llama.embed, on the given token ids
        llm = _open(job["path"], embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_NONE)
        tokens, n_embd = job["tokens"], llm.n_embd()
        llm._batch.reset()
        llm._batch.add_sequence(tokens, 0, True)
        llm._ctx.decode(llm._batch)
        ptr = llama_cpp.llama_get_embeddings(llm._ctx.ctx)
        flat = np.ctypeslib.as_array(ptr, shape=(len(tokens) * n_embd,))
        return {"embeddings": flat.reshape(len(tokens), n_embd).copy()}
    if op == "tokenize":
        llm = _open(job["path"], vocab_only=True)
        return {str(i): np.array(llm.tokenize(t.encode()), dtype=np.int64)
                for i, t in enumerate(job["texts"])}
    if op == "quantize":
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{job['ftype'].upper()}")
        params.pure, params.nthread = True, 2
        rc = llama_cpp.llama_model_quantize(job["src"].encode(), job["dst"].encode(), params)
        assert rc == 0, f"llama_model_quantize returned {rc}"
        return {}
    raise ValueError(op)


if __name__ == "__main__":
    task = json.loads(sys.argv[1])
    np.savez(task["out"], **_main(task))
