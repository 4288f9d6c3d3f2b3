"""Issue 27's second "done when": a clean clone, the README's main-job command only (a fresh
virtual environment, `pip install -e .`, `archc build densenet121`), then every command of the
README's command table runs its documented example without a traceback. Slow tier: the install
alone takes minutes (`pytest tests/test_fresh_install.py --slow -s` prints each step's time).

The files the examples read are made with this interpreter (the test extra's torchvision,
scikit-image and scikit-learn), never with the fresh environment, which has only the main
install."""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def readme_main_job() -> str:
    """The README's 'Build DenseNet-121 (sets everything up …)' command, as written there."""
    text = (ROOT / "README.md").read_text()
    command = re.search(r"Build DenseNet-121.*?```sh\n(.*?)\n```", text, re.S).group(1).strip()
    assert command == "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/archc build densenet121"
    return command


def readme_commands() -> list:
    """The first words of each row of the README's command table (`archc check`, `archc build`…)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| command | what it does |"):]
    table = table[:table.index("\n\n")]
    return sorted({re.match(r"\| `archc (\w+)", row).group(1) for row in table.splitlines()[2:]})


def inputs(folder: Path) -> None:
    """What the documented examples read: a torchvision checkpoint, photos, an image folder, a
    spec of one's own."""
    import torch
    import torchvision
    from PIL import Image
    from skimage import data
    sys.path.insert(0, str(ROOT / "tests"))
    from train_helpers import write_digits
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), folder / "resnet18.pth")
    Image.fromarray(data.chelsea()).save(folder / "chelsea.jpg")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")
    write_digits(folder / "digits")
    (folder / "net.arch").write_text("input 32x32x3\nstem: conv3(16) bn relu\nhead: gap fc(10)\n")


# Each row of the README's table, its documented example made concrete (the files: `inputs`).
EXAMPLES = [
    ("check", "check resnet18 net.arch"),
    ("check", "check --expr 'inception(64, 96>128, 16>32, pool>32)' --input 28x28x192"),
    ("check", "check resnet50 --sizes --json"),
    ("build", "build resnet18 --param classes=10 --input 64x64x3 --json"),
    ("build", "build net.arch --emit ir"),
    ("build", "build lenet5 --compile --batch 2"),
    ("build", "build ssd300_vgg16 --out ssd.safetensors"),
    ("bench", "bench lenet5 --batch 2 --iters 2 --repeats 2 --json"),
    ("bench", "bench lenet5 --backend onnxruntime --iters 2 --repeats 2"),
    ("bench", "bench lenet5 --profile --top 3 --repeats 2"),
    ("export", "export lenet5 --out lenet5.onnx"),
    ("export", "export lenet5 --out lenet5.stablehlo --batch 4"),
    ("export", "export lenet5 --out lenet5.py --format flax"),
    ("import", "import resnet18 resnet18.pth --from torchvision --out r18.safetensors"),
    ("predict", "predict resnet18 --weights r18.safetensors chelsea.jpg --top 5"),
    ("detect", "detect ssd300_vgg16 --weights ssd.safetensors astronaut.png --out out --limit 3"),
    ("build", "build unet --param width=8 --out unet8.safetensors"),
    ("segment", "segment unet --param width=8 --weights unet8.safetensors astronaut.png --out seg"),
    ("train", "train lenet5 --data digits --epochs 1 --out runs/lenet"),
    ("list", "list"),
    ("list", "list resnet --task classification --json"),
    ("graph", "graph resnet18 -o resnet18.svg"),
    ("fmt", "fmt net.arch --check"),
    ("lsp", "lsp --check net.arch"),
    ("lsp", "lsp"),                     # the server itself: stdin closed, it stops
]


@pytest.mark.slow
def test_the_readme_install_runs_every_documented_command(tmp_path):
    assert shutil.which("git") is not None
    clone = tmp_path / "archc"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    python = Path(sys.executable).resolve()
    command = readme_main_job().replace("python3 ", f"{python} ", 1)   # this Python version
    t0 = time.perf_counter()
    r = subprocess.run(command, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=3600)
    install_s = time.perf_counter() - t0
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Total params: 8,062,504" in r.stdout      # torchvision's densenet121 with BN statistics
    print(f"\nthe README's main-job command: {install_s:.0f} s")

    work = tmp_path / "work"
    work.mkdir()
    inputs(work)
    archc = clone / ".venv" / "bin" / "archc"
    assert sorted({name for name, _ in EXAMPLES}) == readme_commands()     # every row has an example
    failed = []
    for _, example in EXAMPLES:
        t0 = time.perf_counter()
        r = subprocess.run(f"{archc} {example}", shell=True, cwd=work, env=env, capture_output=True, text=True,
                           timeout=900, stdin=subprocess.DEVNULL)
        print(f"archc {example}: exit {r.returncode}, {time.perf_counter() - t0:.1f} s")
        if r.returncode != 0 or "Traceback" in r.stderr:
            failed.append(f"archc {example}: exit {r.returncode}\n{r.stderr[-2000:]}")
    assert not failed, "\n".join(failed)
    assert (work / "out" / "astronaut.png").is_file() and (work / "resnet18.svg").is_file()
    assert (work / "seg" / "astronaut_mask.png").is_file() and (work / "seg" / "astronaut_overlay.png").is_file()
