"""Stage 1 tests: load_image (every bad file -> InputError, every pixel mode -> right RGB) and preprocess
(LLaVA-1.5's pad-to-square + CLIP normalisation). All images are generated here; nothing downloads."""

import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dcp_desktop import image as image_module
from dcp_desktop.errors import InputError
from dcp_desktop.image import expand_to_square, load_image, preprocess

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def input_error_message(source) -> str:
    with pytest.raises(InputError) as caught:
        load_image(source)
    message = str(caught.value)
    assert "\n" not in message
    return message


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, *, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand: lets a header claim any size, and writes 16-bit RGB, which PIL cannot."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b""))


def noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def rgb_array(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)  # (H, W, 3)


# ---------------------------------------------------------------- bad files


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere.png"
    message = input_error_message(path)
    assert str(path) in message and "no such file" in message


def test_directory_is_refused(tmp_path):
    message = input_error_message(tmp_path)
    assert str(tmp_path) in message and "directory" in message


def test_unreadable_file_is_refused(tmp_path, monkeypatch):
    # Simulated, because file permissions do not stop root (CI containers) or Windows the same way.
    path = tmp_path / "locked.png"
    noise_rgb(4, 4).save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(image_module, "open", refuse, raising=False)
    message = input_error_message(path)
    assert "locked.png" in message and "Permission denied" in message


@pytest.mark.parametrize(
    "file_name, content",
    [
        ("notes.txt", b"USER: what is in this picture?\n"),
        ("mmproj.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + bytes(64)),
        ("empty.png", b""),
    ],
)
def test_non_image_is_refused(tmp_path, file_name, content):
    path = tmp_path / file_name
    path.write_bytes(content)
    message = input_error_message(path)
    assert file_name in message and "not an image PIL can read" in message


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def zeroed_middle(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(64) + data[middle + 64:]


# No zeroed JPEG: libjpeg decodes damaged entropy data into wrong pixels without an error.
@pytest.mark.parametrize(
    "suffix, format, damage",
    [(".png", "PNG", truncated), (".png", "PNG", zeroed_middle), (".jpg", "JPEG", truncated)],
)
def test_damaged_image_data_is_refused(tmp_path, suffix, format, damage):
    path = tmp_path / f"photo{suffix}"
    noise_rgb(64, 64).save(path, format)
    path.write_bytes(damage(path.read_bytes()))
    message = input_error_message(path)
    assert path.name in message and "truncated or corrupt" in message


def test_pasted_bytes_errors_name_the_paste(tmp_path):
    assert "<pasted image>: not an image" in input_error_message(b"plain text, not pixels")
    noise_rgb(64, 64).save(tmp_path / "photo.png")
    cut = truncated((tmp_path / "photo.png").read_bytes())
    assert "<pasted image>: image data is truncated" in input_error_message(cut)


# ---------------------------------------------------------------- decompression bombs


def claimed_size_png(tmp_path, width: int, height: int):
    """A 100-byte PNG whose header claims width x height 1-bit pixels and holds no pixel data: the
    size check must refuse it from the header alone (decoding it would report corrupt data)."""
    path = tmp_path / f"claims_{width}x{height}.png"
    path.write_bytes(png_bytes(width, height, bit_depth=1, colour_type=0, rows=b""))
    return path


def test_pixel_limit_is_checked_on_the_header(tmp_path):
    # 81 MP: above our 64 MP limit, below PIL's own warning threshold (~89 MP).
    message = input_error_message(claimed_size_png(tmp_path, 9000, 9000))
    assert "claims_9000x9000.png" in message and "9000x9000" in message
    assert f"{image_module.MAX_IMAGE_PIXELS:,}" in message


@pytest.mark.parametrize("width, height", [(10_000, 9_500), (20_000, 20_000)])
def test_pil_bomb_warning_and_error_become_input_error(tmp_path, width, height):
    # 95 MP makes PIL warn, 400 MP makes it raise DecompressionBombError; both must be one InputError.
    path = claimed_size_png(tmp_path, width, height)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = input_error_message(path)
    assert caught == []
    assert path.name in message and "image too large" in message


def test_pixel_limit_applies_to_every_source(tmp_path, monkeypatch):
    monkeypatch.setattr(image_module, "MAX_IMAGE_PIXELS", 100)
    picture = noise_rgb(20, 20)
    picture.save(tmp_path / "small.png")
    assert "small.png" in input_error_message(tmp_path / "small.png")
    assert "<pasted image>" in input_error_message(picture)
    assert "20x20 = 400" in input_error_message((tmp_path / "small.png").read_bytes())
    assert load_image(noise_rgb(10, 10)).size == (10, 10)


# ---------------------------------------------------------------- pixel modes -> RGB


def test_rgb_file_round_trips_exactly(tmp_path):
    picture = noise_rgb(33, 17)
    picture.save(tmp_path / "noise.png")
    loaded = load_image(str(tmp_path / "noise.png"))
    assert loaded.size == (33, 17)
    np.testing.assert_array_equal(rgb_array(loaded), rgb_array(picture))


def test_pasted_pil_image_is_copied_not_changed():
    picture = Image.new("RGBA", (3, 3), (10, 20, 30, 255))
    loaded = load_image(picture)
    assert picture.mode == "RGBA" and loaded is not picture
    assert loaded.getpixel((1, 1)) == (10, 20, 30)


def test_grayscale_value_becomes_equal_channels():
    values = np.arange(256, dtype=np.uint8).reshape(16, 16)
    loaded = rgb_array(load_image(Image.fromarray(values, "L")))
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], values)


def test_bilevel_becomes_black_and_white():
    picture = Image.new("1", (2, 1))
    picture.putpixel((1, 0), 1)
    assert rgb_array(load_image(picture)).tolist() == [[[0, 0, 0], [255, 255, 255]]]


def test_palette_image_uses_palette_colours(tmp_path):
    picture = Image.new("P", (3, 1))
    picture.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 - 3) * 3)
    for x in range(3):
        picture.putpixel((x, 0), x)
    picture.save(tmp_path / "palette.png")
    loaded = rgb_array(load_image(tmp_path / "palette.png"))
    assert loaded.tolist() == [[[255, 0, 0], [0, 255, 0], [0, 0, 255]]]


def test_palette_transparency_is_composited_over_white(tmp_path):
    picture = Image.new("P", (2, 1))
    picture.putpalette([255, 0, 0, 0, 0, 255] + [0] * 254 * 3)
    picture.putpixel((1, 0), 1)
    picture.save(tmp_path / "sticker.png", transparency=0)  # palette entry 0 (red) is transparent
    with Image.open(tmp_path / "sticker.png") as stored:
        assert stored.mode == "P"
    loaded = rgb_array(load_image(tmp_path / "sticker.png"))
    assert loaded.tolist() == [[[255, 255, 255], [0, 0, 255]]]


def test_alpha_is_composited_over_white(tmp_path):
    picture = Image.new("RGBA", (3, 1))
    picture.putdata([(255, 0, 0, 255), (255, 0, 0, 128), (0, 0, 0, 0)])  # opaque, half, clear
    picture.save(tmp_path / "logo.png")
    loaded = rgb_array(load_image(tmp_path / "logo.png"))
    # 128/255 red over white: 255 * (1 - 128/255) = 127 in green and blue.
    np.testing.assert_allclose(loaded[0], [[255, 0, 0], [255, 127, 127], [255, 255, 255]], atol=1)


def test_gray_alpha_is_composited_over_white():
    picture = Image.new("LA", (1, 1), (0, 128))
    np.testing.assert_allclose(rgb_array(load_image(picture))[0, 0], [127, 127, 127], atol=1)


def test_cmyk_tiff_becomes_rgb(tmp_path):
    picture = Image.new("CMYK", (3, 1))
    picture.putdata([(255, 0, 0, 0), (0, 255, 255, 0), (0, 0, 0, 255)])  # cyan, red, black
    picture.save(tmp_path / "print.tif")
    loaded = rgb_array(load_image(tmp_path / "print.tif"))
    assert loaded.tolist() == [[[0, 255, 255], [255, 0, 0], [0, 0, 0]]]


def test_16_bit_grayscale_png_scales_to_8_bit(tmp_path):
    every_value = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    Image.fromarray(every_value).save(tmp_path / "scan16.png")
    with Image.open(tmp_path / "scan16.png") as stored:
        assert stored.mode == "I;16"  # the mode whose naive convert("RGB") clips
    loaded = rgb_array(load_image(tmp_path / "scan16.png"))
    expected = np.rint(every_value / 257.0)  # 257 * v -> v, 65535 -> 255
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], expected)


@pytest.mark.parametrize("dtype", [">u2", "<i4"])  # modes I;16B and I
def test_other_16_bit_grayscale_modes_scale_to_8_bit(dtype):
    gradient = (257 * np.arange(0, 256, 15)).astype(dtype).reshape(1, -1)  # 8-bit 0, 15, ..., 255
    loaded = rgb_array(load_image(Image.fromarray(gradient)))
    np.testing.assert_array_equal(loaded[0, :, 1], np.arange(0, 256, 15))


def test_16_bit_rgb_png_keeps_its_colours(tmp_path):
    colour_16 = np.array([[[255 * 257, 128 * 257, 0], [0, 64 * 257, 1 * 257]]], dtype=">u2")  # (1, 2, 3)
    rows = b"\x00" + colour_16.tobytes()  # filter byte 0 ("none"), then the row
    (tmp_path / "deep.png").write_bytes(png_bytes(2, 1, bit_depth=16, colour_type=2, rows=rows))
    loaded = rgb_array(load_image(tmp_path / "deep.png"))
    assert loaded.tolist() == [[[255, 128, 0], [0, 64, 1]]]


@pytest.mark.parametrize("scale", [1.0, 255.0])  # 0..1 floats (TIFF, NumPy) and PIL's 0..255 convention
def test_float_grayscale_becomes_8_bit(scale):
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32) * scale
    loaded = rgb_array(load_image(Image.fromarray(values, "F")))
    np.testing.assert_allclose(loaded[0, :, 0], [0, 128, 255], atol=1)


def test_mode_pil_cannot_convert_is_refused():
    # "La" (premultiplied gray + alpha) is internal to PIL; no decoder makes it, but a caller could.
    assert "pixel mode 'La'" in input_error_message(Image.new("La", (2, 2)))


def test_exif_orientation_is_applied(tmp_path):
    # Stored 64 wide x 32 high, left half red; orientation 6 means "rotate 90 degrees clockwise to view".
    picture = Image.new("RGB", (64, 32), (0, 0, 255))
    picture.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    picture.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    loaded = rgb_array(load_image(tmp_path / "phone.jpg"))
    assert loaded.shape == (64, 32, 3)  # now 32 wide x 64 high, the red half on top
    np.testing.assert_allclose(loaded[8, 16], [255, 0, 0], atol=8)
    np.testing.assert_allclose(loaded[56, 16], [0, 0, 255], atol=8)


# ---------------------------------------------------------------- preprocess


def llava_expand2square(pil_img, background_color):
    """LLaVA-1.5's own helper (llava/mm_utils.py), copied as the reference."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def clip_image_processor():
    """LLaVA-1.5's processor. transformers 5 picks a torchvision backend when torchvision is installed,
    which resizes differently; the PIL backend is the one LLaVA was trained with, so ask for it by name."""
    transformers = pytest.importorskip("transformers")
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    return processor_class(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), resample=Image.Resampling.BICUBIC,
    )


@pytest.mark.parametrize("width, height", [(400, 400), (100, 100), (500, 300), (171, 402)])
def test_preprocess_matches_llava_with_hugging_face_clip_processor(width, height):
    picture = noise_rgb(width, height, seed=width)
    ours = preprocess(picture, image_size=336, mean=CLIP_MEAN, std=CLIP_STD)
    padded = llava_expand2square(picture, tuple(int(m * 255) for m in CLIP_MEAN))
    reference = clip_image_processor()(padded, return_tensors="np")["pixel_values"][0]  # (3, 336, 336)
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5)


@given(
    width=st.integers(1, 48), height=st.integers(1, 48), image_size=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=40, deadline=None)
def test_preprocess_shape_and_dtype(width, height, image_size, seed):
    pixels = preprocess(noise_rgb(width, height, seed), image_size=image_size, mean=CLIP_MEAN, std=CLIP_STD)
    assert pixels.shape == (3, image_size, image_size)
    assert pixels.dtype == np.float32 and pixels.flags.c_contiguous
    # Every value is some 8-bit level after normalisation.
    lowest = (0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    highest = (1 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    assert np.all(pixels >= lowest[:, None, None] - 1e-5) and np.all(pixels <= highest[:, None, None] + 1e-5)


def normalised(rgb_0_255) -> np.ndarray:
    return (np.asarray(rgb_0_255) / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)  # (3,)


def test_preprocess_white_image_values():
    pixels = preprocess(Image.new("RGB", (50, 50), "white"), image_size=8, mean=CLIP_MEAN, std=CLIP_STD)
    np.testing.assert_allclose(pixels, np.broadcast_to(normalised((255, 255, 255))[:, None, None], (3, 8, 8)),
                               atol=1e-6)


@pytest.mark.parametrize("width, height", [(200, 100), (100, 200)])
def test_non_square_image_is_padded_with_the_mean_colour(width, height):
    pixels = preprocess(Image.new("RGB", (width, height), (255, 0, 0)), image_size=336,
                        mean=CLIP_MEAN, std=CLIP_STD)  # (3, 336, 336)
    if width < height:
        pixels = pixels.transpose(0, 2, 1)  # the bands are left and right; look at them as rows
    # The red image covers rows 84..252 of 336; keep away from its edges, where bicubic blends.
    bands = np.concatenate([pixels[:, :78], pixels[:, 258:]], axis=1)
    # The mean colour is truncated to 8 bits, so it normalises to 0 within one level.
    one_level = 1 / 255 / np.array(CLIP_STD)
    assert np.all(np.abs(bands) <= one_level[:, None, None])
    np.testing.assert_allclose(pixels[:, 90:246], np.broadcast_to(normalised((255, 0, 0))[:, None, None],
                                                                  (3, 156, 336)), atol=1e-5)


def test_padding_is_centred_with_llava_offsets():
    # (W - H) // 2 = 1: one background row above the image, two below; image_size = 5 keeps pixels exact.
    background = tuple(int(m * 255) for m in CLIP_MEAN)
    wide = rgb_array(expand_to_square(Image.new("RGB", (5, 2), (255, 0, 0)), background))
    assert [tuple(wide[row, 0]) for row in range(5)] == [background, (255, 0, 0), (255, 0, 0), background,
                                                         background]
    tall = noise_rgb(2, 5)
    np.testing.assert_array_equal(rgb_array(expand_to_square(tall, background)),
                                  rgb_array(llava_expand2square(tall, background)))
    pixels = preprocess(Image.new("RGB", (5, 2), (255, 0, 0)), image_size=5, mean=CLIP_MEAN, std=CLIP_STD)
    np.testing.assert_allclose(pixels[:, 1, 0], normalised((255, 0, 0)), atol=1e-5)
    np.testing.assert_allclose(pixels[:, 0, 0], normalised(background), atol=1e-5)


def test_preprocess_refuses_what_load_image_never_returns():
    with pytest.raises(ValueError, match="RGB image"):
        preprocess(Image.new("L", (4, 4)), image_size=4, mean=CLIP_MEAN, std=CLIP_STD)
    with pytest.raises(ValueError, match="3 values"):
        preprocess(Image.new("RGB", (4, 4)), image_size=4, mean=CLIP_MEAN[:2], std=CLIP_STD)
