"""The student's label space and where each teacher's classes land in it (MUKA label maps).

Teachers may each cover a different subset of the classes. By default a teacher class maps to
the student class of the same name; `teachers[].label_map` renames classes first. Student
classes are `student.labels` when given, else the union of the teachers' classes in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distill.pipeline.config import ConfigError
from distill.storage.records import TeacherManifest


@dataclass
class LabelSpace:
    labels: list[str]              # the student's classes; ["score"] for single-score teachers
    maps: list[np.ndarray]         # per teacher: the student index of each of its classes
    covered: np.ndarray            # [K, C] bool

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def scores(self) -> bool:
        return self.labels == ["score"]


def check_label_map(name: str, label_map: dict[str, str], classes: list[str], where: str) -> None:
    """Every key of a teacher's label_map is one of its classes: a misspelt key would leave its
    class unmapped without a word, and the student would learn a label space nobody asked for."""
    unknown = [key for key in label_map if key not in classes]
    if unknown:
        raise ConfigError(f"{where}: teachers[{name}].label_map: no class "
                          f"{', '.join(map(repr, unknown))} in teacher '{name}' (its classes: "
                          f"{', '.join(map(repr, classes))}); map only those")


def build_label_space(manifests: list[TeacherManifest], student_labels: list[str] | None = None,
                      label_maps: dict[str, dict[str, str]] | None = None,
                      where: str = "the config") -> LabelSpace:
    """`where` (the config file) starts the message of a label map that names unknown classes."""
    label_maps = label_maps or {}
    for m in manifests:
        check_label_map(m.name, label_maps.get(m.name, {}), m.settings["labels"], where)
    widths = {m.settings["num_labels"] for m in manifests}
    if 1 in widths:
        if widths != {1}:
            raise ConfigError("teachers mix single-score outputs with class logits; distil "
                              "scores and classes with separate students")
        return LabelSpace(["score"], [np.zeros(1, dtype=int)] * len(manifests),
                          np.ones((len(manifests), 1), dtype=bool))
    renamed = [[label_maps.get(m.name, {}).get(label, label) for label in m.settings["labels"]]
               for m in manifests]
    labels = list(student_labels) if student_labels else list(dict.fromkeys(
        label for names in renamed for label in names))
    index = {label: i for i, label in enumerate(labels)}
    maps = []
    for m, names in zip(manifests, renamed):
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ConfigError(f"teacher '{m.name}' predicts {unknown[:5]}, which are not student "
                              "labels; add them to student.labels or map them with "
                              f"teachers[{m.name}].label_map")
        if len(set(names)) != len(names):
            raise ConfigError(f"teachers[{m.name}].label_map sends two classes to one label")
        maps.append(np.array([index[n] for n in names]))
    covered = np.zeros((len(manifests), len(labels)), dtype=bool)
    for k, mapping in enumerate(maps):
        covered[k, mapping] = True
    return LabelSpace(labels, maps, covered)
