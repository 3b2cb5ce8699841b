"""The demo (python -m fusedce.demo) trains a classifier as good as scikit-learn's."""

import subprocess
import sys

import pytest

from conftest import need
from fusedce import demo

# The margin: the test split has 450 images, so one image is 0.22 percentage points. Our
# minibatch SGD runs a fixed, short budget (30 epochs, under a second) and stops a little
# above the exact optimum of the same L2-regularised objective that scikit-learn's L-BFGS
# reaches, so a few borderline images can fall either way. 1.5 points (about 7 images)
# allows for that; a wrong gradient or a broken kernel costs far more than 7 images.
MARGIN = 0.015


@pytest.fixture(scope="module")
def sklearn():
    return need("sklearn")


@pytest.mark.parametrize("seed", [0, 2])
def test_demo_reaches_logistic_regression_accuracy(sklearn, seed):
    from sklearn.linear_model import LogisticRegression

    X_train, X_test, y_train, y_test = demo.load_split(seed)
    baseline = LogisticRegression(max_iter=5000).fit(X_train, y_train).score(X_test, y_test)
    m = demo.train(seed=seed, compare=False, verbose=False)
    assert m["test_accuracy"] >= baseline - MARGIN, (m["test_accuracy"], baseline)
    assert m["test_accuracy"] > 0.93
    assert m["losses"][-1] < 0.5 * m["losses"][0]


def test_demo_compares_with_the_reference(sklearn, capsys):
    m = demo.train(epochs=1, compare=True, verbose=True)
    printed = capsys.readouterr().out
    assert "epoch   1/1 [########################] loss" in printed
    assert m["calls"] == 22  # 1347 training rows in batches of 64
    assert m["max_grad_diff"] < 1e-6
    assert set(m["seconds"]) >= {"fusedce", "numpy reference"}


def test_demo_main_prints_accuracy(sklearn, capsys):
    assert demo.main(["--epochs", "3", "--no-compare"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed


def test_demo_without_sklearn_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(demo, "have_sklearn", lambda: False)
    assert demo.main([]) == 1
    err = capsys.readouterr().err
    assert "pip install 'fusedce[demo]'" in err


def test_python_dash_m_fusedce_runs_the_demo(sklearn):
    done = subprocess.run([sys.executable, "-m", "fusedce", "--epochs", "1", "--no-compare"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "test accuracy" in done.stdout
