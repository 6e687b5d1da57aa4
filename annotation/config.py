"""The labelling config: a brush label for blurred regions, the model's blur-type hint (read-only),
the annotator's blur type (required unless the image is rejected), and a way to reject.

What a person sees, top to bottom (docs/annotation.md, "The labelling view"): the instructions
with the hotkeys; the ``Blurred`` brush label, already selected, so the first stroke paints; the
image, fitted whole into the view; the model's hint; the annotator's own blur type; reject.
The hint lives in a control of its own, filled by predictions only, as a read-only result (Label
Studio's ``readonly`` result flag: a click cannot change it), so a prediction never fills in the
answer and the answer never overwrites the hint.
"""

from __future__ import annotations

BRUSH = "blur"  # BrushLabels name; its one label is BLURRED
BLURRED = "Blurred"
BLUR_TYPE = "blur_type"  # Choices: defocus | motion (the annotator's answer; no prediction sets it)
BLUR_TYPE_HINT = "blur_type_hint"  # Choices, read-only: the model's guess, shown as a hint
BLUR_TYPES = ("defocus", "motion")
REJECT = "reject"  # Choices: a reason the image cannot be used
REJECT_REASONS = ("no blur", "unusable")
IMAGE = "image"  # the Image tag and the task data key holding the image URL
MASK_COLOUR = "#ff3b30"  # drawn at Label Studio's brush-layer opacity (0.6): the image shows

# Label Studio 1.23's own hotkeys (its editor's keymap), and the number keys it gives choices
INSTRUCTIONS = ("Paint every blurred region: the Blurred brush is selected when a task opens "
                "(hotkey 1). Hotkeys: B brush, E eraser, [ and ] brush size, Ctrl+Z undo, "
                "H pan, Shift+1 fit the image, Ctrl+Enter submit; the number next to a choice "
                "is its key. Then choose the blur type, or reject the image. The model's guess "
                "is a hint, not your answer.")

LABEL_CONFIG = f"""<View>
  <Header value="{INSTRUCTIONS}" size="6"/>
  <BrushLabels name="{BRUSH}" toName="{IMAGE}">
    <Label value="{BLURRED}" background="{MASK_COLOUR}" selected="true" hotkey="1"/>
  </BrushLabels>
  <!-- fitted whole, clear of the zoom and brush-size controls Label Studio floats over the
       image's right edge (90 px) -->
  <Image name="{IMAGE}" value="${IMAGE}" zoom="true" zoomControl="true" brightnessControl="true"
         width="100%" maxWidth="calc(100% - 90px)" maxHeight="70vh" horizontalAlignment="center"/>
  <Header value="Model's guess (a hint, not your answer)" size="6"/>
  <Choices name="{BLUR_TYPE_HINT}" toName="{IMAGE}" choice="single" showInline="true">
    {"".join(f'<Choice value="{t}"/>' for t in BLUR_TYPES)}
  </Choices>
  <View visibleWhen="choice-unselected" whenTagName="{REJECT}">
    <Header value="Blur type (your answer; required unless you reject the image)" size="6"/>
    <Choices name="{BLUR_TYPE}" toName="{IMAGE}" choice="single" showInline="true"
             required="true" requiredMessage="Choose the blur type (defocus or motion), or reject the image.">
      {"".join(f'<Choice value="{t}"/>' for t in BLUR_TYPES)}
    </Choices>
  </View>
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
