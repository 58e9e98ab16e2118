"""Train the bundled example: a small CNN on scikit-learn's digits (8x8 images, 10 classes).

Plain numpy (im2col convolutions, hand-written backward pass, Adam), fixed seeds, a few seconds on a
laptop CPU.  Writes, beside this script:

- ``model.onnx``: opset 17, input ``image`` float32 [1, 1, 8, 8] (pixels scaled to [0, 1]), output
  ``logits`` [1, 10].  Conv -> BatchNormalization -> Relu -> Conv (stride 2) -> Relu -> Flatten -> Gemm;
  the BatchNormalization is left unfused on purpose, as in many exported models.
- ``calibration/NNNN.raw`` and ``heldout/NNNN.raw``: one input each, raw little-endian float32, NCHW.
- ``calibration.txt`` / ``heldout.txt``: input lists (the SDK's format: one file per line; paths are
  relative to the list file), and ``heldout_labels.txt``: the true class of each held-out input.

Calibration inputs come from the training split; held-out inputs are never seen in training.
Run: ``python examples/digits/train.py`` (needs scikit-learn, which the ``test`` extra installs).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SEED = 0
HELDOUT = 360  # 20% of the 1797 images
CALIBRATION = 100
EPOCHS = 40
BATCH = 64
BN_EPS = 1e-5
BN_MOMENTUM = 0.9


# ---- data -------------------------------------------------------------------------------------------
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    images = (d.images / 16.0).astype(np.float32)[:, None]  # N, 1, 8, 8 in [0, 1]
    return images, d.target.astype(np.int64)


# ---- layers (float64 for training, so results do not hinge on summation order) ---------------------
def im2col(x: np.ndarray, stride: int) -> np.ndarray:
    """3x3 patches of ``x`` (N, C, H, W), padding 1: (N, Ho, Wo, C*9)."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::stride, ::stride]
    n, c, ho, wo = win.shape[:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(n, ho, wo, c * 9)


def col2im(dcols: np.ndarray, x_shape: tuple[int, ...], stride: int) -> np.ndarray:
    """The gradient with respect to ``x`` of :func:`im2col`, given the gradient of its patches."""
    n, c, h, w = x_shape
    _, ho, wo, _ = dcols.shape
    d = dcols.reshape(n, ho, wo, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, w + 2))
    for i in range(3):
        for j in range(3):
            dxp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride] += d[..., i, j].transpose(
                0, 3, 1, 2
            )
    return dxp[:, :, 1:-1, 1:-1]


def conv_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    cols = im2col(x, stride)
    out = cols @ w.reshape(w.shape[0], -1).T + b  # N, Ho, Wo, F
    return out.transpose(0, 3, 1, 2), cols


def conv_backward(
    dout: np.ndarray, cols: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...], stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = dout.transpose(0, 2, 3, 1)  # N, Ho, Wo, F
    dw = np.einsum("nhwf,nhwk->fk", d, cols).reshape(w.shape)
    db = d.sum(axis=(0, 1, 2))
    dx = col2im(d @ w.reshape(w.shape[0], -1), x_shape, stride)
    return dx, dw, db


class Model:
    def __init__(self, rng: np.random.Generator) -> None:
        def he(shape: tuple[int, ...], fan_in: int) -> np.ndarray:
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)

        self.p = {
            "conv1.weight": he((8, 1, 3, 3), 9),
            "conv1.bias": np.zeros(8),
            "bn1.scale": np.ones(8),
            "bn1.bias": np.zeros(8),
            "conv2.weight": he((16, 8, 3, 3), 72),
            "conv2.bias": np.zeros(16),
            "fc.weight": he((10, 256), 256),
            "fc.bias": np.zeros(10),
        }
        self.running_mean = np.zeros(8)
        self.running_var = np.ones(8)

    def forward(self, x: np.ndarray, train: bool) -> tuple[np.ndarray, dict]:
        p, cache = self.p, {}
        h1, cache["cols1"] = conv_forward(x, p["conv1.weight"], p["conv1.bias"], 1)
        if train:
            mean, var = h1.mean(axis=(0, 2, 3)), h1.var(axis=(0, 2, 3))
            self.running_mean = BN_MOMENTUM * self.running_mean + (1 - BN_MOMENTUM) * mean
            self.running_var = BN_MOMENTUM * self.running_var + (1 - BN_MOMENTUM) * var
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = 1.0 / np.sqrt(var + BN_EPS)[None, :, None, None]
        xhat = (h1 - mean[None, :, None, None]) * inv_std
        bn = xhat * p["bn1.scale"][None, :, None, None] + p["bn1.bias"][None, :, None, None]
        a1 = np.maximum(bn, 0.0)
        h2, cache["cols2"] = conv_forward(a1, p["conv2.weight"], p["conv2.bias"], 2)
        a2 = np.maximum(h2, 0.0)
        flat = a2.reshape(len(x), -1)
        logits = flat @ p["fc.weight"].T + p["fc.bias"]
        cache.update(x=x, xhat=xhat, inv_std=inv_std, bn=bn, a1=a1, h2=h2, flat=flat)
        return logits, cache

    def backward(self, dlogits: np.ndarray, c: dict) -> dict[str, np.ndarray]:
        p, g = self.p, {}
        g["fc.weight"] = dlogits.T @ c["flat"]
        g["fc.bias"] = dlogits.sum(axis=0)
        da2 = (dlogits @ p["fc.weight"]).reshape(c["h2"].shape)
        dh2 = da2 * (c["h2"] > 0)
        da1, g["conv2.weight"], g["conv2.bias"] = conv_backward(
            dh2, c["cols2"], p["conv2.weight"], c["a1"].shape, 2
        )
        dbn = da1 * (c["bn"] > 0)
        g["bn1.scale"] = (dbn * c["xhat"]).sum(axis=(0, 2, 3))
        g["bn1.bias"] = dbn.sum(axis=(0, 2, 3))
        # batch-norm backward over the (N, H, W) axes
        dxhat = dbn * p["bn1.scale"][None, :, None, None]
        m = dxhat.shape[0] * dxhat.shape[2] * dxhat.shape[3]
        dh1 = (
            c["inv_std"]
            / m
            * (
                m * dxhat
                - dxhat.sum(axis=(0, 2, 3), keepdims=True)
                - c["xhat"] * (dxhat * c["xhat"]).sum(axis=(0, 2, 3), keepdims=True)
            )
        )
        _, g["conv1.weight"], g["conv1.bias"] = conv_backward(
            dh1, c["cols1"], p["conv1.weight"], c["x"].shape, 1
        )
        return g


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = -float(np.log(probs[np.arange(n), labels] + 1e-12).mean())
    dlogits = probs
    dlogits[np.arange(n), labels] -= 1.0
    return loss, dlogits / n


def train(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Model:
    model = Model(rng)
    adam_m = {k: np.zeros_like(v) for k, v in model.p.items()}
    adam_v = {k: np.zeros_like(v) for k, v in model.p.items()}
    beta1, beta2, step = 0.9, 0.999, 0
    x_all = images.astype(np.float64)
    for epoch in range(EPOCHS):
        lr = 0.01 * 0.5 * (1 + np.cos(np.pi * epoch / EPOCHS))  # cosine decay
        order = rng.permutation(len(x_all))
        total = 0.0
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            logits, cache = model.forward(x_all[idx], train=True)
            loss, dlogits = softmax_cross_entropy(logits, labels[idx])
            total += loss * len(idx)
            grads = model.backward(dlogits, cache)
            step += 1
            for k, grad in grads.items():
                adam_m[k] = beta1 * adam_m[k] + (1 - beta1) * grad
                adam_v[k] = beta2 * adam_v[k] + (1 - beta2) * grad * grad
                m_hat = adam_m[k] / (1 - beta1**step)
                v_hat = adam_v[k] / (1 - beta2**step)
                model.p[k] -= lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1:2d}: training loss {total / len(order):.4f}")
    return model


# ---- export -----------------------------------------------------------------------------------------
def to_onnx(model: Model) -> onnx.ModelProto:
    p = model.p

    def init(name: str, value: np.ndarray) -> TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)

    inits = [init(k, v) for k, v in p.items()]
    inits += [init("bn1.mean", model.running_mean), init("bn1.var", model.running_var)]
    nodes = [
        helper.make_node(
            "Conv",
            ["image", "conv1.weight", "conv1.bias"],
            ["conv1"],
            "conv1",
            kernel_shape=[3, 3],
            pads=[1] * 4,
        ),
        helper.make_node(
            "BatchNormalization",
            ["conv1", "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"],
            ["bn1"],
            "bn1",
            epsilon=BN_EPS,
        ),
        helper.make_node("Relu", ["bn1"], ["relu1"], "relu1"),
        helper.make_node(
            "Conv",
            ["relu1", "conv2.weight", "conv2.bias"],
            ["conv2"],
            "conv2",
            kernel_shape=[3, 3],
            pads=[1] * 4,
            strides=[2, 2],
        ),
        helper.make_node("Relu", ["conv2"], ["relu2"], "relu2"),
        helper.make_node("Flatten", ["relu2"], ["flat"], "flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], "fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "digits_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="opendlc-examples"
    )
    m.ir_version = 8  # opset 17's IR version, readable by older runtimes too
    m.doc_string = "8x8 digit classifier trained on scikit-learn's digits by examples/digits/train.py"
    onnx.checker.check_model(m, full_check=True)
    return m


def write_inputs(folder: Path, name: str, images: np.ndarray) -> Path:
    """Write one raw float32 file per image and the input list naming them."""
    sub = folder / name
    shutil.rmtree(sub, ignore_errors=True)
    sub.mkdir(parents=True)
    lines = []
    for i, img in enumerate(images):
        path = sub / f"{i:04d}.raw"
        np.ascontiguousarray(img[None], dtype="<f4").tofile(path)
        lines.append(f"{name}/{path.name}")
    listing = folder / f"{name}.txt"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args()

    rng = np.random.default_rng(SEED)
    images, labels = load_digits()
    order = rng.permutation(len(images))
    heldout_idx, train_idx = order[:HELDOUT], order[HELDOUT:]
    model = train(images[train_idx], labels[train_idx], rng)

    logits, _ = model.forward(images[heldout_idx].astype(np.float64), train=False)
    accuracy = float((logits.argmax(axis=1) == labels[heldout_idx]).mean())
    print(f"held-out accuracy (numpy): {accuracy:.4f} on {HELDOUT} images")

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_model = to_onnx(model)
    onnx.save_model(onnx_model, args.out / "model.onnx")

    # the exported graph must compute what was trained
    import onnxruntime as ort

    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_logits = np.concatenate(
        [session.run(None, {"image": img[None]})[0] for img in images[heldout_idx]], axis=0
    )
    max_diff = float(np.abs(onnx_logits - logits).max())
    print(f"ONNX Runtime vs numpy logits: max difference {max_diff:.2e}")
    if max_diff > 1e-3:
        raise SystemExit("the exported model does not match the trained one")

    calibration_idx = train_idx[:CALIBRATION]
    write_inputs(args.out, "calibration", images[calibration_idx])
    write_inputs(args.out, "heldout", images[heldout_idx])
    (args.out / "heldout_labels.txt").write_text("".join(f"{int(v)}\n" for v in labels[heldout_idx]))
    print(f"wrote {args.out / 'model.onnx'}, {CALIBRATION} calibration and {HELDOUT} held-out inputs")


if __name__ == "__main__":
    main()
