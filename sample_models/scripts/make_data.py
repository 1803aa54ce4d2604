"""Writes the small data files that the training scripts in this folder read.

    python3 sample_models/scripts/make_data.py        # rewrites every file (same bytes each time)

The files are committed, so the tests never run this. Each corrupt file differs from its clean
twin by one value, the way a real data file goes bad (a sensor gap, a corrupt record).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def write_csv(path: Path, rows: np.ndarray, fmt: str = "%.4f") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, rows, delimiter=",", fmt=fmt)


def digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8 'digits' in [0, 1]: class k is a bright row k on a dim noisy background."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 8, n)
    images = rng.random((n, 8, 8)) * 0.3
    images[np.arange(n), labels, :] = 1.0
    return images.reshape(n, 64), labels


def nanogpt_tokens() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 12, 3000).astype(np.uint16)
    folder = HERE / "nanogpt" / "data" / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    ids[:2700].tofile(folder / "train.bin")
    ids[2700:].tofile(folder / "val.bin")
    (folder / "vocab_size.txt").write_text("12\n")


def word_corpus() -> None:
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    folder = HERE / "wlm" / "data" / "tiny"
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in (("train", 120), ("valid", 20), ("test", 20)):
        text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(lines))
        (folder / f"{split}.txt").write_text(text + "\n")
    (HERE / "lightning_healthy" / "data").mkdir(parents=True, exist_ok=True)
    text = "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) for _ in range(80))
    (HERE / "lightning_healthy" / "data" / "words.txt").write_text(text + "\n")


def digit_files() -> None:
    images, labels = digits(96, seed=1)
    write_csv(HERE / "vae" / "data" / "digits.csv", images)
    corrupt = images.copy()
    corrupt[37, 20] = np.nan
    write_csv(HERE / "vae" / "data" / "digits_corrupt.csv", corrupt)
    table = np.concatenate([labels[:, None], images], axis=1)
    write_csv(HERE / "mnist" / "data" / "digits.csv", table)
    write_csv(HERE / "lightning_nan" / "data" / "digits.csv", table)
    corrupt_table = table.copy()
    # row 18 lands at position 20 of random_split(seed 42): the second training batch of the script
    corrupt_table[18, 30] = np.nan
    write_csv(HERE / "lightning_nan" / "data" / "digits_corrupt.csv", corrupt_table)


def sine_waves() -> None:
    rng = np.random.default_rng(2)
    x = np.arange(40)[None, :] + rng.integers(-80, 80, 10)[:, None]
    data = np.sin(x / 20.0)
    write_csv(HERE / "tsp" / "data" / "traindata.csv", data)
    gap = data.copy()
    gap[6, 25] = np.nan
    write_csv(HERE / "tsp" / "data" / "traindata_gap.csv", gap)


def char_text() -> None:
    rng = random.Random(1)
    words = ["the", "king", "and", "lord", "of", "thee", "my", "good", "sir", "O", "God,", "is", "not", "so!"]
    text = " ".join(rng.choice(words) for _ in range(400)) + "\n"
    (HERE / "mingpt").mkdir(exist_ok=True)
    (HERE / "mingpt" / "input.txt").write_text(text)
    (HERE / "hf_trainer" / "data").mkdir(parents=True, exist_ok=True)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) for _ in range(60)]
    (HERE / "hf_trainer" / "data" / "train.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    nanogpt_tokens()
    word_corpus()
    digit_files()
    sine_waves()
    char_text()
