"""CAM-family kernels against float64 NumPy references written as explicit per-image
loops over the papers' formulas, plus the methods' known properties."""

import numpy as np
import pytest
import tensorflow as tf

from sightline.kernels import (cam, eigencam, gradcam, gradcam_plus_plus, hirescam, layercam,
                               xgradcam)
from tests.tolerances import GRADCAM_CAM_RTOL, KERNEL_ATOL, KERNEL_RTOL

B, h, w, K = 4, 5, 6, 7


# --- float64 references: one image, one channel, one position at a time ----------------

def reference_cam(activations, class_weights):
    A = np.asarray(activations, np.float64)
    W = np.asarray(class_weights, np.float64)
    out = np.zeros(A.shape[:3])
    for b in range(A.shape[0]):
        for i in range(A.shape[1]):
            for j in range(A.shape[2]):
                total = 0.0
                for k in range(A.shape[3]):
                    total += W[b, k] * A[b, i, j, k]
                out[b, i, j] = total
    return out


def relu_of_weighted_channels(A, weights):
    """A[B,h,w,K] float64, weights[B,K] -> ReLU(sum_k weights[b,k] * A[b,i,j,k]), looped."""
    nb, nh, nw, nk = A.shape
    out = np.zeros((nb, nh, nw))
    for b in range(nb):
        for i in range(nh):
            for j in range(nw):
                out[b, i, j] = max(0.0, sum(weights[b, k] * A[b, i, j, k] for k in range(nk)))
    return out


def reference_gradcam(activations, activation_grads):
    A = np.asarray(activations, np.float64)
    G = np.asarray(activation_grads, np.float64)
    nb, nh, nw, nk = A.shape
    alpha = np.zeros((nb, nk))
    for b in range(nb):
        for k in range(nk):
            alpha[b, k] = sum(G[b, i, j, k] for i in range(nh) for j in range(nw)) / (nh * nw)
    return relu_of_weighted_channels(A, alpha)


def reference_gradcam_plus_plus(activations, activation_grads):
    """alpha = g^2 / (2 g^2 + sum_ab A_ab g^3) (0 where the denominator is 0),
    w_k = sum_ij alpha * ReLU(g), map = ReLU(sum_k w_k A_k)."""
    A = np.asarray(activations, np.float64)
    G = np.asarray(activation_grads, np.float64)
    nb, nh, nw, nk = A.shape
    out = np.zeros((nb, nh, nw))
    for b in range(nb):
        weights = np.zeros(nk)
        for k in range(nk):
            channel_total = sum(A[b, a, c, k] for a in range(nh) for c in range(nw))
            for i in range(nh):
                for j in range(nw):
                    g = G[b, i, j, k]
                    denominator = 2.0 * g ** 2 + channel_total * g ** 3
                    alpha = 0.0 if denominator == 0.0 else g ** 2 / denominator
                    weights[k] += alpha * max(g, 0.0)
        for i in range(nh):
            for j in range(nw):
                out[b, i, j] = max(0.0, sum(weights[k] * A[b, i, j, k] for k in range(nk)))
    return out


def reference_hirescam(activations, activation_grads):
    A = np.asarray(activations, np.float64)
    G = np.asarray(activation_grads, np.float64)
    out = np.zeros(A.shape[:3])
    for b, i, j in np.ndindex(*A.shape[:3]):
        out[b, i, j] = max(float(np.dot(G[b, i, j], A[b, i, j])), 0.0)
    return out


def reference_layercam(activations, activation_grads):
    """HiResCAM of the positive part of the gradient."""
    return reference_hirescam(activations, np.maximum(np.asarray(activation_grads, np.float64), 0.0))


def reference_xgradcam(activations, activation_grads):
    """alpha_k = sum_ij (A_ijk / sum_ab A_abk) g_ijk (0 for a channel summing to 0)."""
    A = np.asarray(activations, np.float64)
    G = np.asarray(activation_grads, np.float64)
    nb, nh, nw, nk = A.shape
    alpha = np.zeros((nb, nk))
    for b, k in np.ndindex(nb, nk):
        channel_total = sum(A[b, a, c, k] for a in range(nh) for c in range(nw))
        if channel_total != 0.0:
            alpha[b, k] = sum(A[b, i, j, k] / channel_total * G[b, i, j, k]
                              for i in range(nh) for j in range(nw))
    return relu_of_weighted_channels(A, alpha)


def reference_eigencam(activations):
    """The first principal component from the eigen-decomposition of the K x K
    covariance of the positions (the kernel uses the h*w x h*w Gram matrix instead),
    sign: positive covariance with the channel-mean map, then ReLU."""
    A = np.asarray(activations, np.float64)
    nb, nh, nw, nk = A.shape
    out = np.zeros((nb, nh, nw))
    for b in range(nb):
        X = A[b].reshape(nh * nw, nk)
        centred = X - X.mean(axis=0)
        values, vectors = np.linalg.eigh(centred.T @ centred)
        projection = centred @ vectors[:, np.argmax(values)]
        channel_mean = X.mean(axis=1)
        if np.dot(projection - projection.mean(), channel_mean - channel_mean.mean()) < 0:
            projection = -projection
        out[b] = np.maximum(projection, 0.0).reshape(nh, nw)
    return out


# --- inputs ----------------------------------------------------------------------------

def random_activations(rng, shape=(B, h, w, K)):
    """Post-ReLU-like activations: non-negative, about a third of them exactly zero."""
    return np.maximum(rng.normal(0.3, 1.0, shape), 0.0).astype(np.float32)


def random_grads(rng, shape=(B, h, w, K), scale=0.3):
    return (scale * rng.normal(size=shape)).astype(np.float32)


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                               rtol=KERNEL_RTOL, atol=KERNEL_ATOL)


# --- against the references ------------------------------------------------------------

def test_cam_matches_reference(rng):
    A = rng.normal(size=(B, h, w, K)).astype(np.float32)
    W = rng.normal(size=(B, K)).astype(np.float32)
    out = cam(A, W)
    assert out.shape == (B, h, w) and out.dtype == tf.float32
    expected = reference_cam(A, W)
    assert (expected < 0).any(), "CAM is signed: the test needs negative values"
    assert_close(out, expected)


def test_gradcam_matches_reference(rng):
    A = random_activations(rng)
    G = random_grads(rng)
    out = gradcam(A, G)
    assert out.shape == (B, h, w) and out.dtype == tf.float32
    expected = reference_gradcam(A, G)
    assert (expected == 0).any() and (expected > 0).any(), "the ReLU must bite somewhere"
    assert_close(out, expected)


@pytest.mark.parametrize("activation_sign", ["non_negative", "signed"])
def test_gradcam_plus_plus_matches_reference(rng, activation_sign):
    G = random_grads(rng)
    if activation_sign == "non_negative":
        A = random_activations(rng)
    else:
        A = rng.normal(size=(B, h, w, K)).astype(np.float32)
        # Negative channel sums put a pole at 2 + S g = 0 for some g > 0, where alpha
        # has no float32 digits left; keep the inputs away from it (flip those g).
        S = A.astype(np.float64).sum(axis=(1, 2), keepdims=True)
        near_pole = (G > 0) & (np.abs(2.0 + S * G) < 0.5)
        G[near_pole] *= -1.0
        assert ((G > 0) & (S < 0)).any(), "the signed case must have negative channel sums"
    out = gradcam_plus_plus(A, G)
    assert out.shape == (B, h, w) and out.dtype == tf.float32
    expected = reference_gradcam_plus_plus(A, G)
    assert (expected > 0).any()
    assert_close(out, expected)


def test_gradcam_plus_plus_zero_gradients_give_zero_alpha_not_nan(rng):
    A = random_activations(rng)
    G = random_grads(rng)
    G[rng.uniform(size=G.shape) < 0.4] = 0.0  # scattered zeros
    G[0, :, :, 2] = 0.0  # a whole channel without gradient
    G[1] = 0.0  # a whole image without gradient
    out = gradcam_plus_plus(A, G).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[1], 0.0)
    assert_close(out, reference_gradcam_plus_plus(A, G))


def test_gradcam_plus_plus_channel_without_gradient_has_no_weight(rng):
    """A channel whose gradient is 0 everywhere contributes nothing, however large."""
    A = random_activations(rng)
    G = random_grads(rng)
    G[..., 3] = 0.0
    A_loud = A.copy()
    A_loud[..., 3] = 1e3
    np.testing.assert_allclose(gradcam_plus_plus(A_loud, G).numpy(),
                               gradcam_plus_plus(A, G).numpy(),
                               rtol=KERNEL_RTOL, atol=KERNEL_ATOL)


# --- Grad-CAM++ by hand, from the paper's definition ------------------------------------
#
# The paper explains Y = exp(S), S the class's logit, and defines
#     alpha[i,j,k] = Y2[i,j,k] / (2 Y2[i,j,k] + sum_ab A[a,b,k] Y3[i,j,k]),
#     w[k] = sum_ij alpha[i,j,k] ReLU(Y1[i,j,k]),   map = ReLU(sum_k w[k] A[...,k]),
# where Y1, Y2, Y3 are the 1st, 2nd and 3rd derivatives of Y with respect to A[i,j,k].
# For a head that is linear in A, S = sum_ijk V[i,j,k] A[i,j,k] + b, the derivatives of S
# are V, 0, 0, so by the chain rule Y1 = e^S V, Y2 = e^S V^2, Y3 = e^S V^3 and
#     alpha[i,j,k] = 1 / (2 + S_k V[i,j,k])  where V[i,j,k] != 0, with S_k = sum_ab A[a,b,k],
#     w[k] = e^S sum_ij ReLU(V[i,j,k]) / (2 + S_k V[i,j,k]).
# The kernel takes g = dS/dA = V and leaves out the one positive factor e^S per image.

def test_gradcam_plus_plus_by_hand_on_a_linear_head():
    """One channel, two positions: A = [1, 2] (S_1 = 3), V = [1, -1].
    alpha = [1/(2 + 3*1), 1/(2 + 3*(-1))] = [1/5, -1]; only the first position has
    ReLU(V) > 0, so w = (1/5)*1 = 1/5 and the map is ReLU((1/5) * [1, 2]) = [0.2, 0.4]."""
    A = np.array([1.0, 2.0], np.float32).reshape(1, 1, 2, 1)
    V = np.array([1.0, -1.0], np.float32).reshape(1, 1, 2, 1)
    assert_close(gradcam_plus_plus(A, V), np.array([[[0.2, 0.4]]]))


def test_gradcam_plus_plus_by_hand_on_a_gap_dense_head():
    """GAP then dense, S = sum_k W[k] mean_ij A[i,j,k] + b, on a 1x2 map with 2 channels:
    A[...,0] = [1, 3], A[...,1] = [2, 0], W = [0.5, -1]. Then V[i,j,k] = W[k]/2:
    g_0 = 0.25, g_1 = -0.5; S_0 = 4, S_1 = 2; alpha_0 = 1/(2 + 4*0.25) = 1/3,
    alpha_1 = 1/(2 + 2*(-0.5)) = 1; w_0 = 2 positions * (1/3) * 0.25 = 1/6, w_1 = 0
    (ReLU of a negative gradient); map = ReLU((1/6) * [1, 3]) = [1/6, 1/2]."""
    A = np.array([[1.0, 2.0], [3.0, 0.0]], np.float32).reshape(1, 1, 2, 2)
    G = np.broadcast_to(np.array([0.25, -0.5], np.float32), (1, 1, 2, 2))
    assert_close(gradcam_plus_plus(A, G), np.array([[[1.0 / 6.0, 0.5]]]))


def test_gradcam_plus_plus_on_gap_dense_heads_has_closed_form_weights(rng):
    """On a GAP + dense head g[i,j,k] = W[k]/(h w) everywhere, so the sum over positions
    in w[k] is h w times one term: w[k] = ReLU(W[k]) / (2 + a[k] W[k]), with a[k] the
    pooled activation mean_ij A[i,j,k]; map = ReLU(sum_k w[k] A[...,k])."""
    A = random_activations(rng)
    W = rng.uniform(-1.0, 1.0, (B, K))  # keeps 2 + a W > 0 (a is below 1 on average)
    G = np.broadcast_to((W / (h * w))[:, None, None, :], (B, h, w, K)).astype(np.float32)
    pooled = A.astype(np.float64).mean(axis=(1, 2))  # [B,K]
    weights = np.maximum(W, 0.0) / (2.0 + pooled * W)  # [B,K]
    expected = np.maximum(np.einsum("bhwk,bk->bhw", A.astype(np.float64), weights), 0.0)
    assert (expected > 0).any() and (W < 0).any()
    assert_close(gradcam_plus_plus(A, G), expected)


@pytest.mark.parametrize("kernel, reference", [(layercam, reference_layercam),
                                               (hirescam, reference_hirescam),
                                               (xgradcam, reference_xgradcam)],
                         ids=["layercam", "hirescam", "xgradcam"])
def test_gradient_weighted_cams_match_reference(rng, kernel, reference):
    A = random_activations(rng)
    A[0, :, :, 1] = 0.0  # a dead channel: XGrad-CAM's normalisation must not divide by 0
    G = random_grads(rng)
    out = kernel(A, G)
    assert out.shape == (B, h, w) and out.dtype == tf.float32
    expected = reference(A, G)
    assert (expected == 0).any() and (expected > 0).any(), "the ReLU must bite somewhere"
    assert np.isfinite(out.numpy()).all()
    assert_close(out, expected)


def low_rank_activations(rng, shape=(B, h, w, K)):
    """Activations with one dominant spatial pattern plus small noise: a clear gap
    between the first two principal components, so the first is well defined in
    float32 (with a near-tie any rotation of the top two would be as right)."""
    nb, nh, nw, nk = shape
    pattern = rng.normal(size=(nb, nh, nw, 1))
    loadings = rng.uniform(0.5, 1.5, (nb, 1, 1, nk))
    return (1.0 + pattern * loadings + 0.05 * rng.normal(size=shape)).astype(np.float32)


def test_eigencam_matches_covariance_reference(rng):
    A = low_rank_activations(rng)
    out = eigencam(A)
    assert out.shape == (B, h, w) and out.dtype == tf.float32
    expected = reference_eigencam(A)
    assert (expected == 0).any() and (expected > 0).any(), "the ReLU must bite somewhere"
    # The eigenvector of a Gram matrix in float32: error ~ eps * |G| / gap, relative to the map.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(out.numpy() / scale, expected / scale, atol=1e-4)


def test_eigencam_sign_follows_the_channel_mean_map(rng):
    """Negating the spatial pattern flips the principal component; the sign rule must
    flip the projection with it so that the map still follows the activations."""
    A = low_rank_activations(rng, (1, h, w, K))
    mean_map = A[0].mean(axis=-1)
    out = eigencam(A).numpy()[0]
    hot = out > 0
    assert hot.any() and (~hot).any()
    assert mean_map[hot].mean() > mean_map[~hot].mean()
    # A class-agnostic map: it does not change when a constant is added to every
    # position of a channel (the centring removes it).
    shifted = A + rng.uniform(0, 3, (1, 1, 1, K)).astype(np.float32)
    np.testing.assert_allclose(eigencam(shifted).numpy()[0], out,
                               atol=1e-4 * np.abs(out).max())


def test_eigencam_of_constant_activations_is_zero():
    A = np.ones((2, h, w, K), np.float32)
    out = eigencam(A).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 0.0, atol=1e-6)


def test_gradcam_zero_gradients_give_zero_maps(rng):
    A = random_activations(rng)
    out = gradcam(A, np.zeros_like(A)).numpy()
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, 0.0)


# --- float32 arithmetic whatever the input dtype ---------------------------------------

@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("name", ["cam", "gradcam", "gradcam_plus_plus", "layercam",
                                  "hirescam", "xgradcam"])
def test_low_precision_inputs_give_float32_maps(rng, dtype, name):
    kernel, reference = {
        "cam": (cam, reference_cam),
        "gradcam": (gradcam, reference_gradcam),
        "gradcam_plus_plus": (gradcam_plus_plus, reference_gradcam_plus_plus),
        "layercam": (layercam, reference_layercam),
        "hirescam": (hirescam, reference_hirescam),
        "xgradcam": (xgradcam, reference_xgradcam),
    }[name]
    A = tf.constant(random_activations(rng), dtype)
    if name == "cam":
        second = tf.constant(rng.normal(size=(B, K)), dtype)
    else:
        second = tf.constant(random_grads(rng), dtype)
    out = kernel(A, second)
    assert out.dtype == tf.float32
    # The reference sees exactly the rounded inputs; the arithmetic after them is
    # float32, so the kernel tolerance holds (a half-precision sum would not).
    assert_close(out, reference(tf.cast(A, tf.float64).numpy(),
                                tf.cast(second, tf.float64).numpy()))


# --- properties ------------------------------------------------------------------------

def test_gradcam_with_constant_channel_gradients_is_relu_of_weighted_sum(rng):
    A = rng.normal(size=(B, h, w, K)).astype(np.float32)
    per_channel = rng.normal(size=(B, K)).astype(np.float32)
    G = np.broadcast_to(per_channel[:, None, None, :], A.shape).copy()
    expected = np.maximum(np.einsum("bijk,bk->bij", A.astype(np.float64),
                                    per_channel.astype(np.float64)), 0.0)
    assert (expected == 0).any() and (expected > 0).any()
    assert_close(gradcam(A, G), expected)
    # ... which is ReLU(CAM) with those weights.
    assert_close(gradcam(A, G), np.maximum(cam(A, per_channel).numpy(), 0.0))


def test_gradcam_on_gap_dense_head_is_relu_cam_over_area(rng):
    """GAP then dense: dy_c/dA[i,j,k] = W[k,c] / (h*w) everywhere, so Grad-CAM equals
    ReLU(CAM) / (h*w) (DESIGN.md)."""
    A = random_activations(rng)
    W = rng.normal(size=(B, K)).astype(np.float32)
    G = np.broadcast_to((W / (h * w))[:, None, None, :], A.shape).astype(np.float32)
    expected = np.maximum(cam(A, W).numpy(), 0.0) / (h * w)
    assert (expected == 0).any() and (expected > 0).any()
    np.testing.assert_allclose(gradcam(A, G).numpy(), expected, rtol=GRADCAM_CAM_RTOL,
                               atol=KERNEL_ATOL / (h * w))


def test_hirescam_and_xgradcam_on_gap_dense_head_equal_gradcam(rng):
    """GAP then dense: the gradient W[k,c]/(h*w) is the same at every position, so
    HiResCAM's sum_k g*A is Grad-CAM's map, and XGrad-CAM's alpha_k = sum_ij
    (A/S_k) * W_k/(h*w) = W_k/(h*w) for every channel with S_k != 0 (a channel with
    S_k = 0 is all zero here, post-ReLU): all three equal ReLU(CAM)/(h*w). LayerCAM
    keeps only the positive weights: ReLU(CAM with ReLU(W))/(h*w)."""
    A = random_activations(rng)
    A[1, :, :, 2] = 0.0  # a dead channel
    W = rng.normal(size=(B, K)).astype(np.float32)
    G = np.broadcast_to((W / (h * w))[:, None, None, :], A.shape).astype(np.float32)
    expected = np.maximum(cam(A, W).numpy(), 0.0) / (h * w)
    assert (expected == 0).any() and (expected > 0).any()
    atol = KERNEL_ATOL / (h * w)
    for kernel in (hirescam, xgradcam, gradcam):
        np.testing.assert_allclose(kernel(A, G).numpy(), expected, rtol=GRADCAM_CAM_RTOL, atol=atol)
    positive_part = np.maximum(cam(A, np.maximum(W, 0)).numpy(), 0.0) / (h * w)
    assert not np.allclose(positive_part, expected), "LayerCAM must differ here"
    np.testing.assert_allclose(layercam(A, G).numpy(), positive_part, rtol=GRADCAM_CAM_RTOL,
                               atol=atol)


def test_hirescam_differs_from_gradcam_when_gradients_vary(rng):
    """Averaging the gradient over positions (Grad-CAM) loses what HiResCAM keeps."""
    A = random_activations(rng)
    G = random_grads(rng)
    assert not np.allclose(hirescam(A, G).numpy(), gradcam(A, G).numpy(), atol=1e-3)


def test_cam_is_linear_in_the_weights(rng):
    A = rng.normal(size=(B, h, w, K)).astype(np.float32)
    W1 = rng.normal(size=(B, K)).astype(np.float32)
    W2 = rng.normal(size=(B, K)).astype(np.float32)
    a, b = 1.5, -0.75
    combined = (a * W1.astype(np.float64) + b * W2).astype(np.float32)
    assert_close(cam(A, combined),
                 a * cam(A, W1).numpy().astype(np.float64) + b * cam(A, W2).numpy())
    # No hidden bias: zero weights give a zero map.
    np.testing.assert_array_equal(cam(A, np.zeros_like(W1)).numpy(), 0.0)


def test_gradcam_plus_plus_scales_with_gradients_when_channel_sums_vanish(rng):
    """With every channel sum of A at 0, alpha = 1/2 wherever g != 0, so scaling the
    gradients by a positive s scales the weights, hence the map, by s."""
    A = rng.normal(size=(1, h, w, K))
    A -= A.mean(axis=(1, 2), keepdims=True)  # channel sums exactly 0 (up to rounding)
    A = A.astype(np.float32)
    G = random_grads(rng, (1, h, w, K))
    base = gradcam_plus_plus(A, G).numpy()
    assert (base > 0).any()
    np.testing.assert_allclose(gradcam_plus_plus(A, 3.0 * G).numpy(), 3.0 * base,
                               rtol=KERNEL_RTOL, atol=KERNEL_ATOL)
