"""A plain reference written without the toolkit: the kind of 60-line script a Kaggler starts from, so the toolkit's
recipes can be compared with it side by side (experiments/recipes.py runs both on the same split and budget).

torchvision resnet34 from scratch on greyscale drawings (1-px cv2 lines drawn at 64 px, copied to 3 channels),
AdamW with a one-cycle rate peaking at 2e-3, batch 64, random horizontal flips, 8 epochs over every training drawing
of the 16 large classes of the shared slice; test-time augmentation averages the flipped image. Scored on Kaggle's
labelled test rows of those classes. It reads the Kaggle CSVs itself (pandas + json) and writes a prediction CSV
(key_id + one probability column per class) so the same scorer reads it as the toolkit's.

    python experiments/plain_baseline.py --data ../shared/data/quickdraw/kaggle --output runs/plain/preds.csv --seed 0
"""
import argparse
import json
import time

import cv2
import numpy as np
import pandas as pd
import torch
import torchvision

CLASSES = sorted(["airplane", "bicycle", "calculator", "camera", "computer", "crayon", "dragon", "eye", "guitar",
                  "headphones", "map", "paint can", "paintbrush", "television", "cat", "monkey"])


def draw(strokes: list, size: int = 64) -> np.ndarray:
    img = np.zeros((size, size), np.uint8)
    for xs, ys in ((s[0], s[1]) for s in strokes):
        pts = (np.stack([xs, ys], 1) * (size - 1) / 255).round().astype(np.int32)
        cv2.polylines(img, [pts], False, 255, 1)
    return img


def images(drawings: pd.Series) -> torch.Tensor:
    return torch.from_numpy(np.stack([draw(json.loads(d)) for d in drawings]))[:, None].repeat(1, 3, 1, 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data/quickdraw/kaggle")
    p.add_argument("--output", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    start = time.time()
    train = pd.concat([pd.read_csv(f"{args.data}/train_simplified/{c}.csv") for c in CLASSES])
    x, y = images(train["drawing"]), torch.tensor([CLASSES.index(w) for w in train["word"]])
    test = pd.read_csv(f"{args.data}/test_simplified.csv")
    test = test.merge(pd.read_csv(f"{args.data}/test_simplified_solution.csv"))
    test = test[test["word"].str.replace("_", " ").isin(CLASSES)]
    xt = images(test["drawing"])
    model = torchvision.models.resnet34(num_classes=len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    steps = args.epochs * (len(x) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x) - 63, 64):
            xb, yb = x[order[i:i + 64]].float() / 255, y[order[i:i + 64]]
            flip = torch.rand(len(xb)) < 0.5
            xb[flip] = xb[flip].flip(3)
            loss = torch.nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        xt = xt.float() / 255
        probs = torch.cat([(model(b).softmax(1) + model(b.flip(3)).softmax(1)) / 2 for b in xt.split(256)])
    out = pd.DataFrame(probs.numpy(), columns=CLASSES)
    out.insert(0, "key_id", test["key_id"].to_numpy())
    out.to_csv(args.output, index=False, float_format="%.6g")
    top3 = probs.topk(3, 1).indices.numpy()
    truth = np.array([CLASSES.index(w.replace("_", " ")) for w in test["word"]])
    map3 = ((top3 == truth[:, None]) / np.arange(1, 4)).sum(1).mean()
    print(f"plain baseline: MAP@3 {map3:.4f} on {len(truth)} test drawings, {time.time() - start:.0f} s in all")


if __name__ == "__main__":
    main()
