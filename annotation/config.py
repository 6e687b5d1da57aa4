"""The labelling config: a brush label for blurred regions, the blur type, and a way to reject."""

from __future__ import annotations

BRUSH = "blur"  # BrushLabels name; its one label is BLURRED
BLURRED = "Blurred"
BLUR_TYPE = "blur_type"  # Choices: defocus | motion
BLUR_TYPES = ("defocus", "motion")
REJECT = "reject"  # Choices: a reason the image cannot be used
REJECT_REASONS = ("no blur", "unusable")
IMAGE = "image"  # the Image tag and the task data key holding the image URL

LABEL_CONFIG = f"""<View>
  <Header value="Paint every blurred region (255 = blurred). Pick the blur type, or reject the image."/>
  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true" brightnessControl="true"/>
  <BrushLabels name="{BRUSH}" toName="{IMAGE}">
    <Label value="{BLURRED}" background="#ff3b30"/>
  </BrushLabels>
  <Header value="Blur type" size="6"/>
  <Choices name="{BLUR_TYPE}" toName="{IMAGE}" choice="single" showInline="true">
    {"".join(f'<Choice value="{t}"/>' for t in BLUR_TYPES)}
  </Choices>
  <Header value="Reject (the image is left out of the dataset)" size="6"/>
  <Choices name="{REJECT}" toName="{IMAGE}" choice="single" showInline="true">
    {"".join(f'<Choice value="{r}"/>' for r in REJECT_REASONS)}
  </Choices>
  <Text name="source_path" value="$source_path"/>
</View>
"""


def brush_result(rle: list[int], width: int, height: int) -> dict:
    """A BrushLabels result item (Label Studio's JSON) for a mask encoded as brush RLE."""
    return {"from_name": BRUSH, "to_name": IMAGE, "type": "brushlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": rle, "brushlabels": [BLURRED]}}


def choice_result(name: str, value: str) -> dict:
    return {"from_name": name, "to_name": IMAGE, "type": "choices", "value": {"choices": [value]}}
