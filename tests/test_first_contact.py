"""What a newcomer meets first: the messages of common mistakes, show_config at a prompt, why
tests skip, links in the docs and docstrings, the demo's comparison with scikit-learn."""

import ast
import code
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fusedce
from conftest import need

REPO = Path(__file__).resolve().parents[1]


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------- PyTorch CPU tensors, NumPy API

def _calls(torch):
    """(op, call taking the tensor-or-array converter, argument that gets a tensor,
    what the message must point to) for every public op of the NumPy API."""
    x = rng(0).standard_normal((4, 3)).astype(np.float32)
    t = np.array([0, 2, 1, 2])
    w = np.array([1.0, 2.0, 0.5], np.float32)
    use = {name: f"use fusedce.torch.{name} for PyTorch tensors (autograd, PyTorch's conventions)"
           for name in ("softmax", "log_softmax", "nll_loss", "cross_entropy")}
    mse = "fusedce.torch has no {}; use torch.nn.functional.mse_loss for PyTorch tensors"
    T = torch.from_numpy
    return [
        ("softmax", lambda: fusedce.softmax(T(x)), "x", use["softmax"]),
        ("log_softmax", lambda: fusedce.log_softmax(T(x), out=np.empty_like(x)), "x",
         use["log_softmax"]),
        ("softmax_backward", lambda: fusedce.softmax_backward(x, T(x)), "y", use["softmax"]),
        ("log_softmax_backward", lambda: fusedce.log_softmax_backward(T(x), x), "grad",
         use["log_softmax"]),
        ("nll_loss", lambda: fusedce.nll_loss(x, t, weight=T(w)), "weight", use["nll_loss"]),
        ("nll_loss_backward", lambda: fusedce.nll_loss_backward(1.0, x, T(t)), "target",
         use["nll_loss"]),
        ("cross_entropy", lambda: fusedce.cross_entropy(T(x), T(t)), "logits",
         use["cross_entropy"]),
        ("cross_entropy_backward",
         lambda: fusedce.cross_entropy_backward(1.0, x, t, lse=T(np.zeros(4, np.float32))),
         "lse", use["cross_entropy"]),
        ("cross_entropy_with_grad",
         lambda: fusedce.cross_entropy_with_grad(x, t, grad_loss=torch.tensor(2.0)), "grad_loss",
         use["cross_entropy"]),
        ("mse_loss", lambda: fusedce.mse_loss(x, T(x)), "target", mse.format("mse_loss")),
        ("mse_loss_backward", lambda: fusedce.mse_loss_backward(1.0, x, x, out=T(x.copy())),
         "out", mse.format("mse_loss_backward")),
    ]


def test_a_cpu_tensor_given_to_the_numpy_api_points_to_fusedce_torch():
    torch = need("torch")
    calls = _calls(torch)
    assert {op for op, *_ in calls} == set(fusedce.functional.__all__)
    for op, call, name, use in calls:
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{name} is a PyTorch CPU tensor, and fusedce.{op} takes "
                                   "NumPy arrays: "), message
        assert use in message, message
        assert message.endswith(f", or pass {name}.detach().numpy()"), message


def test_a_tensor_is_refused_with_or_without_grad():
    """Before, a tensor without grad was taken silently (outside autograd) and one with grad
    refused with "must be an array, got Tensor": both now get the same message."""
    torch = need("torch")
    t = torch.tensor([0, 1])
    for x in (torch.zeros(2, 3), torch.zeros(2, 3, requires_grad=True),
              torch.zeros(2, 3, dtype=torch.bfloat16), torch.nn.Parameter(torch.zeros(2, 3))):
        with pytest.raises(TypeError, match=r"^logits is a PyTorch CPU tensor.*"
                                            r"use fusedce\.torch\.cross_entropy "):
            fusedce.cross_entropy(x, t)


def test_cuda_tensors_are_left_to_the_gpu_path(monkeypatch):
    """A PyTorch CUDA tensor is a CUDA array (docs/api.md): it goes to the CUDA kernels, by
    way of CuPy, and is not refused. Seen here without a GPU by stopping at the CuPy step."""
    class Tensor:  # what the array layer looks at: the module of the type, and is_cuda
        __module__ = "torch"
        is_cuda = True

    def gpu_path():
        raise LookupError("the GPU path")

    monkeypatch.setattr(fusedce._arrays, "_cupy", gpu_path)
    with pytest.raises(LookupError, match="the GPU path"):
        fusedce.cross_entropy(Tensor(), Tensor())


def test_fusedce_torch_still_runs_the_numpy_api_on_cpu_tensors():
    """fusedce.torch hands the NumPy API NumPy views of its CPU tensors: unaffected."""
    torch = need("torch")
    ft = pytest.importorskip("fusedce.torch")
    F = torch.nn.functional
    x = torch.randn(6, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([[0, 4, 2], [1, 1, 3], [4, 0, 0], [2, 2, 2], [3, -100, 1], [0, 1, 2]])
    w = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    for fused, plain in ((ft.cross_entropy, F.cross_entropy), (ft.nll_loss, F.nll_loss)):
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        fused(a, t, weight=w).backward()
        plain(b, t, weight=w).backward()
        torch.testing.assert_close(a.grad, b.grad)
    y = x.clone().requires_grad_()
    ft.log_softmax(y, dim=1).sum().backward()
    assert y.grad is not None and y.grad.shape == x.shape


# ------------------------------------------------------------- target shape and class axis

def test_pytorch_layout_with_the_default_axis_says_pass_axis_1():
    x = rng(1).standard_normal((2, 5, 3, 4))  # (N, C, H, W)
    t = rng(2).integers(0, 5, (2, 3, 4))  # (N, H, W)
    expect = (r"^target must have shape \(2, 5, 3\) \(the shape \(2, 5, 3, 4\) of logits without "
              r"its class axis, axis 3\), got \(2, 3, 4\); it fits with the class axis at 1: "
              r"pass axis=1 for PyTorch's \(N, C, \.\.\.\) layout$")
    for call in (lambda: fusedce.cross_entropy(x, t),
                 lambda: fusedce.cross_entropy_with_grad(x, t),
                 lambda: fusedce.cross_entropy_backward(1.0, x, t)):
        with pytest.raises(ValueError, match=expect):
            call()
    with pytest.raises(ValueError, match=r"of logp without its class axis.*pass axis=1"):
        fusedce.nll_loss(x, t)
    # and the advice is right: with axis=1 the call goes through
    assert np.isfinite(fusedce.cross_entropy(x, t, axis=1))


def test_target_shape_names_any_axis_that_fits():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match=r"it fits with the class axis at 0: pass axis=0$"):
        fusedce.cross_entropy(x, np.zeros(3, np.int64))
    x = np.zeros((3, 5, 5, 2))  # axis 1 and axis 2 both leave (3, 5, 2)
    with pytest.raises(ValueError, match=r"at 1 or 2: pass axis=1 for PyTorch's \(N, C, "
                                         r"\.\.\.\) layout or axis=2$"):
        fusedce.cross_entropy(x, np.zeros((3, 5, 2), np.int64))
    with pytest.raises(ValueError) as info:  # fits no axis: no advice
        fusedce.cross_entropy(np.zeros((2, 5)), np.zeros(3, np.int64))
    assert "axis=" not in str(info.value) and str(info.value).endswith("got (3,)")


def test_floating_class_indices_are_told_to_be_integers():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"^target must have shape \(4, 3\) \(floating targets "
                                         r"are class probabilities.*got \(4,\); class indices "
                                         r"must be int32 or int64"):
        fusedce.cross_entropy(x, np.array([0.0, 2.0, 1.0, 1.0]))
    with pytest.raises(ValueError) as info:  # not the shape of indices either
        fusedce.cross_entropy(x, np.zeros((4, 2)))
    assert "int32" not in str(info.value)


# ------------------------------------------------------------------------ non-finite weight

@pytest.mark.parametrize("weight, expect", [
    ([1.0, np.nan, 2.0], r"^weight must hold finite values, got weight\[1\] = nan$"),
    ([1.0, 2.0, -np.inf], r"^weight must hold finite values, got weight\[2\] = -inf$"),
    ([np.inf, 1.0, np.nan], r"got weight\[0\] = inf \(1 more non-finite value after it\)$"),
    ([np.nan] * 3, r"got weight\[0\] = nan \(2 more non-finite values after it\)$"),
])
def test_non_finite_weight_names_the_entry(weight, expect):
    x, t = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match=expect):
        fusedce.cross_entropy(x, t, weight=np.array(weight))
    with pytest.raises(ValueError, match=expect):
        fusedce.nll_loss_backward(1.0, x, t, weight=np.array(weight))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_a_weight_that_overflows_the_compute_dtype_says_so():
    x, t = np.zeros((2, 3), np.float32), np.array([0, 1])
    with pytest.raises(ValueError, match=r"got weight\[1\] = 1e\+300, which overflows float32, "
                                         r"the dtype the loss is computed in$"):
        fusedce.cross_entropy(x, t, weight=np.array([1.0, 1e300, 1.0]))
    assert np.isfinite(fusedce.cross_entropy(x.astype(np.float64), t,
                                             weight=np.array([1.0, 1e300, 1.0])))


# ------------------------------------------------------------------------------ show_config

def test_show_config_prints_or_returns_not_both(capsys):
    assert fusedce.show_config() is None
    printed = capsys.readouterr().out
    assert printed.startswith(f"fusedce {fusedce.__version__}\n") and "simd:" in printed
    text = fusedce.show_config(print_it=False)
    assert capsys.readouterr().out == ""
    assert text + "\n" == printed


def test_show_config_at_the_prompt_shows_the_text_once():
    """An interactive prompt prints a call's printed text and then its returned value."""
    shell = code.InteractiveInterpreter({"fusedce": fusedce})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        shell.runsource("fusedce.show_config()", "<stdin>", "single")
    assert out.getvalue().count("threads:") == 1, out.getvalue()


# ---------------------------------------------------------------------- why tests are skipped

def test_pytest_says_in_one_line_that_torch_is_missing():
    """The PyTorch tests run without torch (its import blocked): every one of them skips,
    and `pytest -ra` gives the reason once, with the command that installs it."""
    block_torch = ("import sys; sys.modules['torch'] = None; import pytest; "
                   "sys.exit(pytest.main(sys.argv[1:]))")
    files = ["tests/test_torch.py", "tests/test_cuda_specific.py", "tests/test_reference.py",
             "tests/test_python_layer.py", "tests/test_doctests.py"]
    done = subprocess.run(
        [sys.executable, "-c", block_torch, "-q", "-ra", "-p", "no:cacheprovider",
         "-k", "torch", *files],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    torch_lines = [line for line in skipped if "torch" in line]
    assert len(torch_lines) == 1, skipped
    assert torch_lines[0].endswith(": torch not installed: pip install torch (or '.[bench]')")
    count = int(re.match(r"SKIPPED \[(\d+)\]", torch_lines[0]).group(1))
    assert count >= 10, torch_lines  # the modules, and the tests of test_reference
    assert "could not import" not in out


def test_readme_says_how_to_run_the_pytorch_tests():
    lines = (REPO / "README.md").read_text().splitlines()
    second = next(i for i, line in enumerate(lines) if "python -m pytest" in line)
    assert lines[second].startswith("pip install") and '".[test]"' in lines[second]
    assert lines[second + 1].startswith("pip install torch && python -m pytest"), lines[second + 1]


# ------------------------------------------------------------------------------------ links

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def _links(text):
    """The targets of a markdown text's links and images, outside code."""
    text = _CODE.sub("", _FENCE.sub("", text))
    return _INLINE.findall(text) + _DEFINITION.findall(text)


def _anchors(path):
    """GitHub's anchors for a markdown file's headings."""
    seen = {}
    anchors = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _markdown_files():
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_link_parser_finds_links():
    found = _links("[a](x.md) `[b](no.md)` ![c](img.png \"t\")\n```\n[d](no.md)\n```\n[e]: y.md\n")
    assert found == ["x.md", "img.png", "y.md"]


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    links = _links(doc.read_text())
    assert links or doc.name != "README.md"
    broken = []
    for link in links:
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.I):  # https:, mailto: ...
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.exists() or REPO not in target.parents:
            broken.append(f"{link} (no file {target})")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link} (no heading #{anchor} in {target.name})")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


_REPO_ONLY = re.compile(r"(?<![\w/.])((?:docs|bench|tests|csrc)/[\w./-]*|[\w-]+\.md)\b")


def test_installed_text_names_repository_files_only_as_such():
    """Docstrings and messages of the installed package may name files that only the source
    repository has (docs/api.md, bench/cpu.py...) only by saying where they are."""
    package = Path(fusedce.__file__).parent
    bad = []
    for source in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text())):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            text = node.value
            for m in _REPO_ONLY.finditer(text):
                around = " ".join(text[max(0, m.start() - 80):m.end() + 80].split())
                if "source repository" not in around:
                    bad.append(f"{source.name}:{node.lineno}: {m.group(1)}")
    assert not bad, bad
    assert _REPO_ONLY.search("see docs/api.md") and _REPO_ONLY.search("DESIGN.md")


# ------------------------------------------------------------------------------------- demo

def test_demo_shows_logistic_regression_beside_fusedce(capsys):
    need("sklearn")
    from fusedce import demo

    assert "LogisticRegression" in demo.__doc__
    assert demo.main(["--epochs", "3", "--no-compare"]) == 0
    printed = capsys.readouterr().out
    ours = re.search(r"^  fusedce, minibatch SGD, 3 epochs +([\d.]+)% +([\d.]+)% +([\d.]+) s$",
                     printed, re.M)
    theirs = re.search(r"^  scikit-learn LogisticRegression, L-BFGS, \d+ iterations +([\d.]+)% "
                       r"+([\d.]+)% +([\d.]+) s$", printed, re.M)
    assert ours and theirs, printed
    # the printed accuracies are the models' own
    m = demo.train(epochs=3, compare=False, verbose=False)
    sk = demo.logistic_regression(seed=0)
    assert ours.group(1) == f"{100 * m['test_accuracy']:.2f}"
    assert ours.group(2) == f"{100 * m['train_accuracy']:.2f}"
    assert theirs.group(1) == f"{100 * sk['test_accuracy']:.2f}"
    assert theirs.group(2) == f"{100 * sk['train_accuracy']:.2f}"
    assert float(ours.group(3)) > 0 and float(theirs.group(3)) > 0
