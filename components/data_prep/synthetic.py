"""Synthetic multimodal reasoning problems whose answers are correct by construction.

Each family draws a scene from a seeded RNG, renders it with PIL, and derives the question,
the ground-truth answer and a structured chain of thought (observe -> reason step by step ->
reflect -> boxed answer) from the same scene, so the SFT target, the RL reward and the eval
label can never disagree with the picture. The CoT mirrors the paper's cold-start data.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

COLORS = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "yellow": (230, 200, 30),
}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Slip:
    """The reasoning an imperfect teacher writes for a problem in its blind spot, and its answer.

    Cold-start CoTs are distilled from a teacher, and a teacher is wrong in ways of its own; the
    verifiable reward of RL knows the true answer. A family with a blind spot gives its scenes a
    slip, and `data.synthetic.teacher_slip` says how often the SFT split carries it.
    """

    steps: list[str]
    check: str
    answer: str


@dataclass
class Scene:
    """What a family generates: the picture, the question and the facts the reasoning uses."""

    family: str
    difficulty: int
    image: Image.Image
    problem: str
    answer: str
    observations: list[str]
    steps: list[str]
    check: str
    key: tuple = field(default_factory=tuple)  # what makes two problems the same problem
    slip: Slip | None = None  # the teacher's wrong reasoning, where the family has a blind spot

    @property
    def uid(self) -> str:
        return hashlib.sha1(repr((self.family, self.key)).encode()).hexdigest()[:16]


def structured_cot(scene: Scene, slipped: bool = False) -> str:
    """The cold-start response format: observation, numbered reasoning, reflection, boxed answer.

    `slipped`: the teacher's wrong version (`scene.slip`) where the scene has one.
    """
    steps, check, answer = scene.steps, scene.check, scene.answer
    if slipped and scene.slip is not None:
        steps, check, answer = scene.slip.steps, scene.slip.check, scene.slip.answer
    lines = ["Observation: " + " ".join(scene.observations), "Reasoning:"]
    lines += [f"Step {i}: {s}" for i, s in enumerate(steps, 1)]
    lines.append(f"Reflection: {check}")
    lines.append(f"The final answer is \\boxed{{{answer}}}.")
    return "\n".join(lines)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed-size bitmap font
        return ImageFont.load_default()


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), "white")
    return image, ImageDraw.Draw(image)


# --------------------------------------------------------------------------- families


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], rgb: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=rgb)


def count_shapes(rng: random.Random, difficulty: int, size: int) -> Scene:
    """Count the shapes of one colour and kind among distractors; more distractors when harder."""
    grid = 3 + difficulty  # cells per side
    cells = rng.sample(range(grid * grid), k=min(grid * grid, 2 + 3 * difficulty))
    colors = list(COLORS)[: 1 + difficulty]
    shapes = list(SHAPES)[: 1 + min(difficulty, 2)]
    items = [(rng.choice(colors), rng.choice(shapes)) for _ in cells]
    target_color, target_shape = rng.choice(items)
    image, draw = _canvas(size)
    cell = size // grid
    for (color, shape), c in zip(items, cells, strict=False):
        x, y = (c % grid) * cell, (c // grid) * cell
        pad = max(2, cell // 6)
        _draw_shape(draw, shape, (x + pad, y + pad, x + cell - pad, y + cell - pad), COLORS[color])
    n = sum(1 for it in items if it == (target_color, target_shape))
    tally: dict[tuple[str, str], int] = {}
    for it in items:
        tally[it] = tally.get(it, 0) + 1
    seen = ", ".join(f"{k} {c} {s}{'s' if k > 1 else ''}" for (c, s), k in sorted(tally.items()))
    return Scene(
        family="count_shapes",
        difficulty=difficulty,
        image=image,
        problem=f"How many {target_color} {target_shape}s are in the image?",
        answer=str(n),
        observations=[f"The image shows {len(items)} shapes: {seen}."],
        steps=[
            f"I only count shapes that are both {target_color} and {target_shape}s.",
            f"Counting them one by one gives {', '.join(str(i) for i in range(1, n + 1))}.",
        ],
        check=f"Recounting the {target_color} {target_shape}s gives {n} again, so the count is right.",
        key=(tuple(zip(cells, items, strict=False)), target_color, target_shape),
    )


def bar_chart(rng: random.Random, difficulty: int, size: int) -> Scene:
    """Read one bar's value; harder levels drop the printed values and leave only the axis."""
    n_bars = 2 + difficulty
    labels = "ABCDEF"[:n_bars]
    step = {1: 1, 2: 2, 3: 5}[difficulty]
    values = [step * rng.randint(1, 9) for _ in labels]
    top = max(values)
    target = rng.randrange(n_bars)
    image, draw = _canvas(size)
    font = _font(max(8, size // 12))
    left, bottom, height = size // 6, size - size // 8, size - size // 4
    width = (size - left - 4) // n_bars
    draw.line((left, bottom, size - 2, bottom), fill="black")
    draw.line((left, bottom, left, bottom - height), fill="black")
    draw.text((2, bottom - height), str(top), fill="black", font=font)
    draw.text((2, bottom - 8), "0", fill="black", font=font)
    for i, (label, value) in enumerate(zip(labels, values, strict=False)):
        x0 = left + i * width + 2
        y0 = bottom - int(height * value / top)
        draw.rectangle((x0, y0, x0 + width - 4, bottom), fill=COLORS["blue"])
        draw.text((x0 + width // 3, bottom + 1), label, fill="black", font=font)
        if difficulty == 1:
            draw.text((x0 + 1, y0 - size // 12), str(value), fill="black", font=font)
    value = values[target]
    return Scene(
        family="bar_chart",
        difficulty=difficulty,
        image=image,
        problem=f"What is the value of the bar labelled {labels[target]} in the chart?",
        answer=str(value),
        observations=[
            f"The chart has {n_bars} bars labelled {', '.join(labels)}; the axis goes from 0 to {top}."
        ],
        steps=[
            f"Bar {labels[target]} is the bar number {target + 1} from the left.",
            f"Its top is at {value} on the axis from 0 to {top}.",
        ],
        check=f"Comparing bar {labels[target]} with the tallest bar ({top}), a value of {value} fits its height.",
        key=(tuple(values), target),
    )


def digit_arithmetic(rng: random.Random, difficulty: int, size: int) -> Scene:
    """Arithmetic over numbers drawn in the image: sums, then three terms, then a product."""
    k = 2 if difficulty != 2 else 3
    hi = {1: 9, 2: 20, 3: 12}[difficulty]
    nums = [rng.randint(1, hi) for _ in range(k)]
    image, draw = _canvas(size)
    font = _font(max(10, size // 6))
    for i, n in enumerate(nums):
        x = (i * size) // k + size // (3 * k)
        y = rng.randint(size // 6, size // 2)
        draw.text((x, y), str(n), fill=rng.choice(list(COLORS.values())), font=font)
    shown = ", ".join(map(str, nums))
    if difficulty == 3:
        result, op, expr = math.prod(nums), "product", " x ".join(map(str, nums))
    else:
        result, op, expr = sum(nums), "sum", " + ".join(map(str, nums))
    return Scene(
        family="digit_arithmetic",
        difficulty=difficulty,
        image=image,
        problem=f"What is the {op} of the numbers shown in the image?",
        answer=str(result),
        observations=[f"The image shows the numbers {shown}."],
        steps=[f"The {op} is {expr}.", f"{expr} = {result}."],
        check=f"Computing {expr} again gives {result}.",
        key=(tuple(nums), op),
    )


def triangle_angle(rng: random.Random, difficulty: int, size: int) -> Scene:
    """The missing angle of a triangle with two labelled angles (180 degrees in total)."""
    step = {1: 10, 2: 5, 3: 1}[difficulty]
    a = step * rng.randint(max(1, 20 // step), 100 // step)
    b = step * rng.randint(max(1, 20 // step), (160 - a) // step)
    c = 180 - a - b
    image, draw = _canvas(size)
    font = _font(max(8, size // 10))
    p = [
        (size // 8, size - size // 6),
        (size - size // 8, size - size // 6),
        (rng.randint(size // 4, 3 * size // 4), size // 6),
    ]
    draw.polygon(p, outline="black", width=2)
    draw.text((p[0][0] + 4, p[0][1] - size // 6), f"{a}°", fill="black", font=font)
    draw.text((p[1][0] - size // 4, p[1][1] - size // 6), f"{b}°", fill="black", font=font)
    draw.text((p[2][0] - 4, p[2][1] + 6), "x", fill="red", font=font)
    return Scene(
        family="triangle_angle",
        difficulty=difficulty,
        image=image,
        problem="In the triangle, two angles are labelled. What is the angle x in degrees?",
        answer=str(c),
        observations=[
            f"The triangle has angles of {a} degrees and {b} degrees labelled, and the third angle is x."
        ],
        steps=["The angles of a triangle add up to 180 degrees.", f"x = 180 - {a} - {b} = {c}."],
        check=f"{a} + {b} + {c} = 180, so x = {c} is consistent.",
        key=(a, b),
    )


COLOR_VALUES = {"red": 1, "blue": 2, "green": 3, "yellow": 4}
SLIPPED_COLOR_VALUES = {**COLOR_VALUES, "yellow": 3}  # the teacher's blind spot (`_color_sum_slip`)
SQUARE_SIDE = (0.2, 0.8)  # color_sum: a square's side as a fraction of its slot's shorter side


def color_sum(rng: random.Random, difficulty: int, size: int) -> Scene:
    """Add the values of coloured squares (red 1, blue 2, green 3, yellow 4): read, look up, add.

    Built for the miniature ablation: the tiny model reads a uniform colour region, yet answering
    in one step means reading every square, mapping each colour to its value and adding in one
    forward pass; the structured CoT splits that into steps it can take one at a time.
    Two squares (one per half) at difficulty 1, three and four in the quadrants above that.

    The observation lists the squares by value, not by place: the answer does not depend on where
    a square is, and naming places ("on the left") made SFT learn to tell left from right, which the
    tiny model did only after a seed-dependent number of steps (an answer that reads one colour
    twice until then). Sides from 0.2 to 0.8 of the slot leave small squares that are harder to
    read than large ones: a graded difficulty that a short SFT does not fully learn and GRPO
    keeps improving (bench/configs/ablation.yaml; docs/benchmarks.md).
    """
    k = 1 + difficulty
    if k == 2:
        slots = [(0, 0, size // 2, size), (size // 2, 0, size // 2, size)]
    else:
        half = size // 2
        chosen = sorted(rng.sample(range(4), k))
        slots = [((q % 2) * half, (q // 2) * half, half, half) for q in chosen]
    image, draw = _canvas(size)
    colors, boxes = [], []
    for x, y, w, h in slots:
        side = max(3, int(min(w, h) * rng.uniform(*SQUARE_SIDE)))
        x0, y0 = x + rng.randint(1, w - side - 1), y + rng.randint(1, h - side - 1)
        color = rng.choice(list(COLOR_VALUES))
        draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=COLORS[color])
        colors.append(color)
        boxes.append((x0, y0, side))
    named = sorted(colors, key=COLOR_VALUES.__getitem__)
    steps, check, total = _color_sum_reasoning(named, COLOR_VALUES)
    return Scene(
        family="color_sum",
        difficulty=difficulty,
        image=image,
        problem=(
            "A red square is worth 1, blue 2, green 3 and yellow 4. "
            "What is the total value of the squares in the image?"
        ),
        answer=str(total),
        observations=[
            f"The image shows {k} squares: " + ", ".join(f"a {c} square" for c in named) + "."
        ],
        steps=steps,
        check=check,
        key=(tuple(zip(colors, boxes, strict=True)),),
        slip=_color_sum_slip(named),
    )


def _color_sum_reasoning(named: list[str], worth_of: dict[str, int]) -> tuple[list[str], str, int]:
    """Look up each square's value, add, and check the sum by taking the last value back off;
    returns the steps, the check and the sum they reach."""
    values = [worth_of[c] for c in named]
    total = sum(values)
    worth = ", ".join(f"{c} is worth {v}" for c, v in zip(named, values, strict=True))
    steps = [f"The values: {worth}.", f"{' + '.join(map(str, values))} = {total}."]
    rest = total - values[-1]
    check = f"{total} - {values[-1]} = {rest}, the value of the other squares, so {total} is right."
    return steps, check, total


def _color_sum_slip(named: list[str]) -> Slip | None:
    """The teacher's blind spot: it takes a yellow square for green's 3 (a consistent CoT, a wrong
    sum). The problem text states yellow's value, so a policy rewarded on the true answer can
    unlearn what SFT imitated."""
    if "yellow" not in named:
        return None
    steps, check, total = _color_sum_reasoning(named, SLIPPED_COLOR_VALUES)
    return Slip(steps, check, str(total))


FAMILIES: dict[str, Callable[[random.Random, int, int], Scene]] = {
    "count_shapes": count_shapes,
    "bar_chart": bar_chart,
    "digit_arithmetic": digit_arithmetic,
    "triangle_angle": triangle_angle,
    "color_sum": color_sum,
}


def generate(
    family: str,
    n: int,
    difficulties: list[int],
    size: int,
    seed: int,
    exclude: set[str] | None = None,
) -> Iterator[Scene]:
    """Yield `n` distinct scenes of one family, none whose uid is in `exclude`.

    Gives up (ValueError) when the family cannot produce that many distinct problems, rather
    than silently returning duplicates that would leak between train and test.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic family {family!r}; valid: {sorted(FAMILIES)}")
    rng = random.Random(f"{family}:{seed}")
    taken = set(exclude or ())
    made, tries = 0, 0
    while made < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(
                f"family {family!r} produced only {made} distinct problems of {n} asked; lower the count"
            )
        scene = FAMILIES[family](rng, difficulties[tries % len(difficulties)], size)
        if scene.uid in taken:
            continue
        taken.add(scene.uid)
        made += 1
        yield scene
