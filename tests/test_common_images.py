"""common/images.py: every kind of image file decodes to the expected 8-bit RGB through the common
reader AND through each image project's own reader (caer_clip frames, dual_cross_attention images,
deepfake_effnet_lstm frames), and frame files come in natural order with one file per frame.

Each test image is N x N with every row alike, so column x holds the x-th expected pixel and the
deepfake reader's resize to N x N is the identity."""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from caer_clip import data as caer_data
from common.images import check_one_file_per_frame, natural_key, open_image, to_8bit
from common.runtime import DataError
from deepfake_effnet_lstm import data as dfd_data
from dual_cross_attention.data import load_rgb
from tests.fixtures_deepfake_effnet_lstm import write_dataset

GREY16 = [0, 255, 256, 32896, 65535]
GREY16_AS_8BIT = [0, 0, 1, 128, 255]  # value >> 8; Pillow's convert("RGB") gave [0, 255, 255, 255, 255]


def _rows(values, dtype) -> np.ndarray:
    return np.tile(np.asarray(values, dtype=dtype), (len(values), 1))  # (N, N): every row alike


def _grey(values):
    return [(v, v, v) for v in values]


def _png_rgb16(path, pixels):
    """A 16-bit-per-channel RGB PNG written by hand: Pillow has no 48-bit mode to save from."""
    width = len(pixels)
    row = b"\x00" + b"".join(struct.pack(">3H", *p) for p in pixels)  # filter byte 0, big-endian samples

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">2I5B", width, width, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * width))
                     + chunk(b"IEND", b""))


def _palette(path, transparent: bool):
    colours = [(255, 0, 0), (0, 0, 255), (10, 200, 30)]
    image = Image.new("P", (3, 3))
    image.putpalette([c for rgb in colours for c in rgb])
    image.putdata([0, 1, 2] * 3)
    if transparent:
        image.info["transparency"] = 1  # index 1 (blue) is fully transparent
    image.save(path)
    assert Image.open(path).mode == "P" and ("transparency" in Image.open(path).info) == transparent
    return colours


def _write_grey16_png(p):
    Image.fromarray(_rows(GREY16, np.uint16)).save(p)
    assert Image.open(p).mode == "I;16"
    return _grey(GREY16_AS_8BIT)


def _write_grey16_tiff_mode_i(p):
    Image.fromarray(_rows(GREY16, np.int32)).save(p)  # 16-bit values in a 32-bit "I" image
    assert Image.open(p).mode == "I"
    return _grey(GREY16_AS_8BIT)


def _write_rgb16_png(p):
    _png_rgb16(p, [(0x8080, 0xFFFF, 0x00FF), (0x0100, 0x7FFF, 0xFF00)])
    return [(128, 255, 0), (1, 127, 255)]  # the high byte of each sample, as for grey


def _write_cmyk_tiff(p):
    image = Image.new("CMYK", (4, 4))
    image.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 128)] * 4)
    image.save(p)
    return [(255, 255, 255), (0, 255, 255), (0, 0, 0), (127, 127, 127)]  # (255 - C) * (255 - K) / 255


def _write_rgba(p):
    Image.fromarray(np.tile(np.array([[10, 20, 30, 0], [200, 100, 50, 255]], np.uint8), (2, 1, 1))).save(p)
    return [(10, 20, 30), (200, 100, 50)]  # alpha dropped: the colour under alpha 0 is kept


def _write_la(p):
    image = Image.new("LA", (2, 2))
    image.putdata([(100, 0), (7, 255)] * 2)
    image.save(p)
    return _grey([100, 7])  # alpha dropped


def _write_l(p):
    Image.fromarray(_rows([0, 1, 128, 254, 255], np.uint8)).save(p)
    return _grey([0, 1, 128, 254, 255])


def _write_bilevel(p):
    Image.fromarray(_rows([False, True, False, True], bool)).save(p)
    assert Image.open(p).mode == "1"
    return _grey([0, 255, 0, 255])


KINDS = {  # name: (file name, writer returning the expected RGB of each column)
    "grey16_png": ("g16.png", _write_grey16_png),
    "grey16_in_mode_I_tiff": ("gI.tif", _write_grey16_tiff_mode_i),
    "rgb16_png": ("rgb16.png", _write_rgb16_png),
    "palette_png": ("p.png", lambda p: _palette(p, transparent=False)),
    "palette_transparent_png": ("pt.png", lambda p: _palette(p, transparent=True)),  # colour of index 1 kept
    "cmyk_tiff": ("cmyk.tif", _write_cmyk_tiff),
    "rgba_png": ("rgba.png", _write_rgba),
    "la_png": ("la.png", _write_la),
    "l_png": ("l.png", _write_l),
    "bilevel_png": ("bw.png", _write_bilevel),
}


def _caer_reader(path):
    record = caer_data.ClipRecord(path.parent, "clip", 1, 0, "list.txt:1")
    dataset = caer_data.ClipDataset([record], None, None, caer_data.DataConfig(), 1, 8, False, 0, True)
    return dataset.load_frame(0, path.name).permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)


def _dfd_reader(path):
    side = Image.open(path).size[0]
    frame = dfd_data.load_image(path, side)  # (3, H, W) float in [0, 1]
    return (frame * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


READERS = {
    "common": lambda p: np.asarray(open_image(p)),
    "caer_clip": _caer_reader,
    "dual_cross_attention": lambda p: np.asarray(load_rgb(p)),
    "deepfake_effnet_lstm": _dfd_reader,
}


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_decodes_to_the_expected_8bit_rgb(kind, reader, tmp_path):
    name, write = KINDS[kind]
    expected = np.array(write(tmp_path / name), dtype=np.uint8)  # (N, 3)
    rgb = READERS[reader](tmp_path / name)
    assert rgb.dtype == np.uint8 and rgb.shape == (len(expected), len(expected), 3)
    assert (rgb == rgb[:1]).all()  # every row alike, as written
    assert rgb[0].tolist() == expected.tolist()


@pytest.mark.parametrize("reader", READERS)
def test_a_16bit_png_is_not_white_through_each_project_reader(reader, tmp_path):
    # Baseline: convert("RGB") clips 16-bit values at 255, so a real 16-bit photo decoded all white.
    Image.fromarray(_rows([1000, 20000, 40000, 60000], np.uint16)).save(tmp_path / "photo16.png")
    rgb = READERS[reader](tmp_path / "photo16.png")
    assert rgb[0, :, 0].tolist() == [3, 78, 156, 234]


def test_16bit_masks_read_as_scaled_grey(tmp_path):
    # deepfake masks are read with mode "L": the same scaling applies.
    Image.fromarray(_rows(GREY16, np.uint16)).save(tmp_path / "mask16.png")
    mask = dfd_data.load_image(tmp_path / "mask16.png", len(GREY16), mode="L")
    assert mask.shape == (1, 5, 5)
    assert (mask[0, 0] * 255).round().tolist() == GREY16_AS_8BIT


def test_big_endian_16bit_grey_scales_like_little_endian():
    values = np.array([GREY16], dtype=">u2")
    image = Image.frombytes("I;16B", (len(GREY16), 1), values.tobytes())
    assert np.asarray(to_8bit(image)).tolist() == [GREY16_AS_8BIT]


@pytest.mark.parametrize("reader", ["caer_clip", "dual_cross_attention", "deepfake_effnet_lstm"])
def test_32bit_integer_image_is_refused_naming_the_file(reader, tmp_path):
    # Mode "I" beyond 16 bits has no white point to scale by; clipping would be the white-image bug again.
    Image.fromarray(_rows([0, 70000], np.int32)).save(tmp_path / "deep32.tif")
    with pytest.raises(DataError, match=r"deep32\.tif.*outside the 16-bit range"):
        READERS[reader](tmp_path / "deep32.tif")


@pytest.mark.parametrize("reader", ["caer_clip", "dual_cross_attention", "deepfake_effnet_lstm"])
def test_truncated_16bit_png_raises_the_project_error(reader, tmp_path):
    path = tmp_path / "cut16.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 65535, (64, 64), dtype=np.uint16)).save(path)
    path.write_bytes(path.read_bytes()[:-600])
    with pytest.raises(DataError, match=r"cut16\.png"):
        READERS[reader](path)


# ----------------------------------------------------------------------------- frame order


def test_natural_key_orders_digit_runs_as_numbers():
    names = ["10.png", "2.png", "1.png", "frame_11.jpg", "frame_9.jpg", "B3.png", "a²b.png"]
    assert sorted(names, key=natural_key) == ["1.png", "2.png", "10.png", "a²b.png", "B3.png",
                                              "frame_9.jpg", "frame_11.jpg"]


def test_same_frame_in_two_files_is_refused(tmp_path):
    folder = tmp_path / "v"
    folder.mkdir()
    for name in ("1.jpg", "1.png", "2.png"):
        (folder / name).write_bytes(b"")
    with pytest.raises(DataError, match=r"index\.csv:2: .*/v holds frame 1 twice \(1\.jpg and 1\.png\)"):
        dfd_data.list_frames(folder, "index.csv:2")
    with pytest.raises(DataError, match=r"list\.txt:3: .*/v holds frame 1 twice"):
        caer_data.list_frames(folder, "list.txt:3")
    check_one_file_per_frame(["1.png", "2.png", "10.png"], folder, "ok")  # distinct frames pass


def test_dfd_read_index_refuses_a_duplicate_frame(tmp_path):
    root = write_dataset(tmp_path / "data", [{"video": "v", "label": "real"}])
    Image.new("RGB", (8, 8)).save(root / "v" / "0001.jpg")  # 0001.png exists too
    with pytest.raises(DataError, match=r"index\.csv:2: .*/v holds frame 1 twice"):
        dfd_data.read_index(root / "index.csv", root, None, frames=2)


def test_one_frame_number_under_two_names_is_refused_in_both_video_readers(tmp_path):
    """'frame_2.png' beside 'frame_02.png': the natural order reads both as frame 2 (before: two
    frames, the sequence showing that frame twice, in caer_clip and deepfake_effnet_lstm alike)."""
    folder = tmp_path / "v"
    folder.mkdir()
    for name in ("frame_1.png", "frame_2.png", "frame_02.png"):
        (folder / name).write_bytes(b"")
    for reader, where in ((dfd_data.list_frames, "index.csv:2"), (caer_data.list_frames, "list.txt:3")):
        with pytest.raises(DataError, match=r"holds frame frame_2 twice \(frame_2\.png and frame_02\.png\)"):
            reader(folder, where)
