"""Augmentations keep boxes and landmarks on the pixels they describe."""
import numpy as np
import pytest

from common.data.transforms import TrainTransform, horizontal_flip, photometric_distort, random_square_crop

# marker colours per landmark; mirrored pairs share a colour so a flip keeps the colour under each point
PAIR_COLOURS = np.array([[0, 0, 255], [0, 0, 255], [0, 255, 0], [255, 0, 0], [255, 0, 0]], np.uint8)
FACES = np.array([[40, 30, 100, 100], [150, 60, 210, 140], [230, 120, 290, 200]], np.float32)


def face_landmarks(boxes):
    """Landmarks at the usual places inside each box, on pixel centres (x.5) so markers can be drawn there."""
    rel = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.57], [0.35, 0.75], [0.65, 0.75]], np.float32)
    size = boxes[:, 2:] - boxes[:, :2]
    return np.floor(boxes[:, None, :2] + rel * size[:, None]) + 0.5


def marked_sample(colours=PAIR_COLOURS, valid=(True, True, False)):
    """A 320x240 grey image with a 7x7 marker under every valid landmark."""
    image = np.full((240, 320, 3), 128, np.uint8)
    landmarks = face_landmarks(FACES)
    valid = np.array(valid)
    for face in np.flatnonzero(valid):
        for (x, y), colour in zip(landmarks[face].astype(int), colours):
            image[y - 3:y + 4, x - 3:x + 4] = colour
    landmarks[~valid] = 0
    return image, {'boxes': FACES.copy(), 'landmarks': landmarks.astype(np.float32), 'landmark_valid': valid,
                   'name': 'x.jpg'}


def colours_under(image, target):
    """Colour of the pixel under each valid landmark that lies inside the image: (points, colours)."""
    h, w = image.shape[:2]
    points = target['landmarks'][target['landmark_valid']].reshape(-1, 2)
    pixel = np.floor(points).astype(int)
    inside = (pixel[:, 0] >= 0) & (pixel[:, 0] < w) & (pixel[:, 1] >= 0) & (pixel[:, 1] < h)
    return inside, image[pixel[inside, 1], pixel[inside, 0]].astype(int)


def test_flip_maps_coordinates_and_swaps_sides():
    image, target = marked_sample(colours=np.array([[0, 0, 255], [0, 255, 0], [255, 0, 0], [255, 255, 0],
                                                    [0, 255, 255]], np.uint8))
    flipped, out = horizontal_flip(image, target)
    np.testing.assert_array_equal(flipped, image[:, ::-1])
    np.testing.assert_allclose(out['boxes'][0], [320 - 100, 30, 320 - 40, 100])
    # the new left eye is the old right eye, mirrored: x -> W - x
    before_lm = target['landmarks'][0]
    np.testing.assert_allclose(out['landmarks'][0, 0], [320 - before_lm[1, 0], before_lm[1, 1]])
    np.testing.assert_allclose(out['landmarks'][0, 3], [320 - before_lm[4, 0], before_lm[4, 1]])
    assert (out['landmarks'][0, :, 0][[0, 3]] < out['landmarks'][0, :, 0][[1, 4]]).all()  # left stays left
    np.testing.assert_array_equal(out['landmark_valid'], target['landmark_valid'])
    assert (out['landmarks'][2] == 0).all()  # faces without landmarks keep zeros
    # the marker under each landmark is now the mirrored partner's colour
    _, before = colours_under(image, target)
    _, after = colours_under(flipped, out)
    np.testing.assert_array_equal(after.reshape(-1, 5, 3), before.reshape(-1, 5, 3)[:, [1, 0, 2, 4, 3]])
    back, again = horizontal_flip(flipped, out)
    np.testing.assert_array_equal(back, image)
    np.testing.assert_allclose(again['landmarks'], target['landmarks'])
    np.testing.assert_allclose(again['boxes'], target['boxes'])


def coordinate_image(height, width):
    """Pixels that say where they are: B = x % 256, G = y % 256, R = 16 * (x // 256) + y // 256."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, 16 * (x // 256) + y // 256], -1).astype(np.uint8)


def where(pixel):
    b, g, r = (int(v) for v in pixel)
    return 256 * (r // 16) + b, 256 * (r % 16) + g  # x, y


def test_crop_keeps_faces_whose_centre_is_inside():
    rng = np.random.default_rng(0)
    image = coordinate_image(240, 320)
    _, target = marked_sample()
    centres = (FACES[:, :2] + FACES[:, 2:]) / 2
    seen_counts = set()
    for _ in range(60):
        crop, out, cropped = random_square_crop(image, target, rng)
        assert cropped and crop.shape[0] == crop.shape[1]
        left, top = where(crop[0, 0])
        side = crop.shape[0]
        inside = ((centres > [left, top]) & (centres < [left + side, top + side])).all(1)
        assert inside.any() and len(out['boxes']) == inside.sum()
        seen_counts.add(int(inside.sum()))
        expected = np.clip(FACES[inside] - [left, top, left, top], 0, side)
        np.testing.assert_allclose(out['boxes'], expected)
        valid = target['landmark_valid'][inside]
        np.testing.assert_array_equal(out['landmark_valid'], valid)
        np.testing.assert_allclose(out['landmarks'][valid], target['landmarks'][inside][valid] - [left, top])
        assert (out['landmarks'][~valid] == 0).all()
        assert out['boxes'].dtype == np.float32 and out['landmarks'].dtype == np.float32
    assert len(seen_counts) > 1  # crops of different sizes keep different numbers of faces


def test_crop_can_keep_whole_boxes_of_cut_faces():
    """clip_boxes=False (CenterFace): the same crops, but a face the crop cuts keeps its full box, shifted."""
    image = coordinate_image(240, 320)
    _, target = marked_sample()
    cut = 0
    for seed in range(40):
        clipped = random_square_crop(image, target, np.random.default_rng(seed))
        whole = random_square_crop(image, target, np.random.default_rng(seed), clip_boxes=False)
        left, top = where(whole[0][0, 0])
        np.testing.assert_array_equal(clipped[0], whole[0])
        kept = ((FACES[:, :2] + FACES[:, 2:]) / 2 > [left, top]).all(1)
        kept &= ((FACES[:, :2] + FACES[:, 2:]) / 2 < [left + whole[0].shape[0], top + whole[0].shape[0]]).all(1)
        np.testing.assert_allclose(whole[1]['boxes'], FACES[kept] - [left, top, left, top])
        cut += int((clipped[1]['boxes'] != whole[1]['boxes']).any())
    assert cut > 0  # some crops did cut a face


def test_whole_face_rule_takes_only_crops_holding_a_whole_face():
    """The reference's rule: a crop is taken only when some face lies wholly inside it; the faces kept are still
    those whose centre is inside. Without the rule some crops hold no whole face."""
    image = coordinate_image(240, 320)
    _, target = marked_sample()
    without_whole = 0
    for seed in range(60):
        for whole_face in (True, False):
            crop, out, cropped = random_square_crop(image, target, np.random.default_rng(seed), whole_face=whole_face)
            left, top = where(crop[0, 0])
            side = crop.shape[0]
            enclosed = ((FACES[:, :2] >= [left, top]) & (FACES[:, 2:] <= [left + side, top + side])).all(1)
            centres = (FACES[:, :2] + FACES[:, 2:]) / 2
            inside = ((centres > [left, top]) & (centres < [left + side, top + side])).all(1)
            assert cropped and len(out['boxes']) == inside.sum()
            if whole_face:
                assert enclosed.any()
            else:
                without_whole += int(not enclosed.any())
    assert without_whole > 0


def test_crop_falls_back_to_whole_image_and_handles_no_faces():
    rng = np.random.default_rng(0)
    image = np.zeros((100, 200, 3), np.uint8)
    tiny = {'boxes': np.array([[0, 0, 2, 2]], np.float32), 'landmarks': np.zeros((1, 5, 2), np.float32),
            'landmark_valid': np.zeros(1, bool)}
    # 1-pixel crops never hold the centre (1, 1) strictly inside: every try fails
    out_image, out, cropped = random_square_crop(image, tiny, rng, scales=(0.01,), tries=5)
    assert not cropped and out_image is image and out is tiny
    empty = {'boxes': np.zeros((0, 4), np.float32), 'landmarks': np.zeros((0, 5, 2), np.float32),
             'landmark_valid': np.zeros(0, bool)}
    out_image, out, cropped = random_square_crop(image, empty, rng)
    assert cropped and out['boxes'].shape == (0, 4) and out_image.shape[0] == out_image.shape[1]


@pytest.mark.parametrize('flip', [False, True])
def test_train_transform_keeps_markers_under_landmarks(flip):
    transform, rng = TrainTransform(image_size=320, distort=False, flip=flip), np.random.default_rng(1)
    checked = 0
    for _ in range(40):
        image, target = marked_sample()
        out_image, out = transform(image, target, rng)
        assert out_image.shape == (320, 320, 3) and out_image.dtype == np.uint8
        assert out['boxes'].dtype == np.float32 and out['landmark_valid'].dtype == bool
        assert len(out['boxes']) == len(out['landmarks']) == len(out['landmark_valid']) >= 1
        inside, found = colours_under(out_image, out)
        expected = np.tile(PAIR_COLOURS, (int(out['landmark_valid'].sum()), 1))[inside]
        assert np.abs(found - expected).max(initial=0) <= 60, 'a landmark no longer sits on its marker'
        checked += len(found)
        boxes = out['boxes']
        assert ((boxes >= 0) & (boxes <= 320)).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert checked > 100


def test_train_transform_takes_images_without_faces():
    image, _ = marked_sample()
    empty = {'boxes': np.zeros((0, 4), np.float32), 'landmarks': np.zeros((0, 5, 2), np.float32),
             'landmark_valid': np.zeros(0, bool), 'name': 'e.jpg'}
    out_image, out = TrainTransform(image_size=96)(image, empty, np.random.default_rng(0))
    assert out_image.shape == (96, 96, 3) and out['name'] == 'e.jpg'
    assert out['boxes'].shape == (0, 4) and out['landmarks'].shape == (0, 5, 2)


def test_same_generator_seed_same_result():
    image, target = marked_sample()
    a = TrainTransform(image_size=128)(image, target, np.random.default_rng([5, 1, 0]))
    b = TrainTransform(image_size=128)(image, target, np.random.default_rng([5, 1, 0]))
    c = TrainTransform(image_size=128)(image, target, np.random.default_rng([5, 2, 0]))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1]['boxes'], b[1]['boxes'])
    assert not np.array_equal(a[0], c[0])


def test_photometric_distort_changes_colours_only():
    rng = np.random.default_rng(0)
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    outputs = [photometric_distort(image, rng) for _ in range(20)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    assert sum(not np.array_equal(o, image) for o in outputs) >= 15
    means = [o.astype(float).mean() for o in outputs]
    assert max(means) - min(means) > 20  # brightness / contrast really vary
