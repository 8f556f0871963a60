"""Face alignment (common/align.py): the templates at other sizes, the similarity fit against hand-computed cases and
against the same least-squares problem solved another way, the crop, and the face picking rules."""
import math

import cv2
import numpy as np
import pytest

from common.align import ARCFACE_112, TEMPLATES, crop_face, parse_size, pick_face, similarity_transform, \
    template_points


def fit_by_linear_least_squares(source, target):
    """The same optimum written another way: a similarity without reflection is x' = a x - b y + tx,
    y' = b x + a y + ty, linear in (a, b, tx, ty); solve the stacked equations by least squares."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source, target):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        values += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows, float), np.array(values, float), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_templates_and_sizes():
    assert TEMPLATES['sphereface'][0][0].tolist() == pytest.approx([30.2946, 51.6963])
    assert template_points('arcface').tolist() == ARCFACE_112.tolist()
    assert np.allclose(template_points('arcface', (224, 224)), ARCFACE_112 * 2)       # a multiple of 112
    assert np.allclose(template_points('arcface', (128, 128)), ARCFACE_112 + [8, 0])  # insightface's 128 rule
    assert np.allclose(template_points('arcface', (256, 256)), ARCFACE_112 * 2 + [16, 0])
    assert np.allclose(template_points('sphereface', (192, 224)), (ARCFACE_112 - [8, 0]) * 2)
    assert np.allclose(template_points('sphereface', (112, 112)), ARCFACE_112)  # centred: 8 px each side
    # another size: scaled by min(W / 112, H / 112) = 1.5, centred (x: (200 - 168) / 2, y: 0)
    assert np.allclose(template_points('arcface', (200, 168)), ARCFACE_112 * 1.5 + [16, 0])
    assert parse_size('96x112') == (96, 112) and parse_size('128') == (128, 128)
    for bad in ('96x', 'ax112', '0x112', '96x112x3'):
        with pytest.raises(ValueError, match='WxH'):
            parse_size(bad)
    with pytest.raises(ValueError, match='unknown template'):
        template_points('vggface')


def test_template_onto_itself_is_the_identity():
    for name in TEMPLATES:
        points = template_points(name)
        assert np.allclose(similarity_transform(points, points), [[1, 0, 0], [0, 1, 0]], atol=1e-12)


def test_hand_computed_similarity():
    # (x, y) -> (-2 y + 3, 2 x + 1): scale 2, rotation +90 degrees, shift (3, 1)
    source = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5]], float)
    target = np.stack([-2 * source[:, 1] + 3, 2 * source[:, 0] + 1], 1)
    assert np.allclose(similarity_transform(source, target), [[0, -2, 3], [2, 0, 1]], atol=1e-12)


def test_known_rotation_scale_shift_recovered():
    scale, angle, shift = 0.37, math.radians(-23.0), np.array([12.5, -40.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    detected = (ARCFACE_112 - shift) @ rotation / scale  # template = scale * rotation @ detected + shift
    matrix = similarity_transform(detected, ARCFACE_112)
    assert np.allclose(matrix, np.hstack([scale * rotation, shift[:, None]]), atol=1e-9)
    assert math.atan2(matrix[1, 0], matrix[0, 0]) == pytest.approx(angle)


def test_reflected_points_are_not_reflected():
    mirrored = ARCFACE_112 * [-1, 1]  # a mirror image's landmarks: the best reflection would fit exactly
    matrix = similarity_transform(mirrored, ARCFACE_112)
    assert np.linalg.det(matrix[:, :2]) > 0
    assert np.allclose(matrix, fit_by_linear_least_squares(mirrored, ARCFACE_112), atol=1e-9)


def test_fit_equals_linear_least_squares_on_noisy_points():
    rng = np.random.default_rng(0)
    for _ in range(20):
        detected = rng.uniform(0, 500, (5, 2))
        for name in TEMPLATES:
            target = template_points(name)
            ours = similarity_transform(detected, target)
            assert np.allclose(ours, fit_by_linear_least_squares(detected, target), atol=1e-8)
            assert np.linalg.det(ours[:, :2]) > 0


def test_crop_puts_the_landmarks_on_the_template():
    # five bright dots on black where a rotated, scaled face's landmarks are; the crop must show them at the template
    angle, scale, shift = math.radians(15), 2.5, np.array([160.0, 90.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    landmarks = ARCFACE_112 @ rotation.T * scale + shift
    image = np.zeros((480, 560, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(image, (round(x), round(y)), 4, (255, 255, 255), -1)
    for name, size in (('arcface', None), ('sphereface', None), ('arcface', (128, 128))):
        crop = crop_face(image, landmarks, name, size)
        assert crop.shape == ((size or TEMPLATES[name][1])[1], (size or TEMPLATES[name][1])[0], 3)
        for x, y in template_points(name, size):
            assert crop[round(y), round(x)].min() > 200  # the dot, shrunk to a radius of about 1.6 px
        assert crop[0, 0].max() == 0 and crop.mean() < 20  # black around the dots, black border


def test_pick_face_rules():
    boxes = np.array([[0, 0, 10, 10], [40, 40, 60, 60], [70, 0, 100, 40]], float)
    scores = np.array([0.7, 0.95, 0.8])
    assert pick_face(boxes, scores, (100, 100), 'score') == 1
    assert pick_face(boxes, scores, (100, 100), 'largest') == 2   # 30 x 40
    assert pick_face(boxes, scores, (100, 100), 'central') == 1   # centre (50, 50)
    assert pick_face(boxes[:0], scores[:0], (100, 100)) is None
    with pytest.raises(ValueError, match='pick'):
        pick_face(boxes, scores, (100, 100), 'first')
