"""TensorBoard event files without TensorFlow: scalars, images, text and hyperparameters.

    w = EventWriter(logdir)                 # enabled=False (e.g. on processes > 0) writes nothing
    w.scalars(step, {"loss": 0.1})
    w.images(step, {"samples": uint8 (H, W, C)})
    w.text(step, "config", "markdown ...")
    w.hparams({"method": "salun", "lr": 1e-4})
    w.close()

It writes the event protos of the `tensorboard` package (the summary protos of
`tensorboard.compat.proto`, the text and hparams plugins' metadata) as TFRecords with its
`RecordWriter` into a plain file: none of it imports TensorFlow, even where TensorFlow is
installed (tensorboard's `EventFileWriter` would, ~5 s, for its file system layer), so TensorBoard reads them as it reads `tf.summary`'s: scalars as simple values,
images as PNG, text as the text plugin's string tensors, hyperparameters as the hparams
plugin's session-start record (TensorBoard's HParams tab pairs them with the run's scalars).
"""
from __future__ import annotations

import io
import os
import socket
import struct
import time
from typing import Any, Mapping, Optional

import numpy as np
from google.protobuf import struct_pb2   # protobuf: tensorboard's dependency
from PIL import Image
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.proto import types_pb2
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.record_writer import RecordWriter


def png_bytes(image: np.ndarray) -> bytes:
  """PNG of an (H, W), (H, W, 1) or (H, W, 3) image, uint8 or float in [0, 1]."""
  a = np.asarray(image)
  if a.dtype != np.uint8:
    a = np.round(np.clip(a.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
  if a.ndim == 3 and a.shape[-1] == 1:
    a = a[..., 0]
  if a.ndim not in (2, 3):
    raise ValueError(f"expected an (H, W[, C]) image, got shape {a.shape}")
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format="PNG")
  return buf.getvalue()


def _hparam_value(v: Any):
  if isinstance(v, bool):
    return struct_pb2.Value(bool_value=v)
  if isinstance(v, (int, float, np.integer, np.floating)):
    return struct_pb2.Value(number_value=float(v))
  return struct_pb2.Value(string_value=str(v))


class EventWriter:
  """One events.out.tfevents file in `logdir` (created on the first write), flushed after
  every write, so a killed run loses nothing it has logged.  A resumed training stage opens a
  new file beside the old ones; TensorBoard reads them all (a step logged twice shows twice)."""

  def __init__(self, logdir: str, enabled: bool = True, filename: str = ""):
    """`filename` (containing "tfevents"): that file, replaced whole; default a new unique one."""
    self.logdir, self.enabled, self.filename = logdir, enabled, filename
    self._file = None
    self._writer: Optional[RecordWriter] = None

  def _write(self, step: int, values) -> None:
    if not self.enabled:
      return
    if self._writer is None:
      os.makedirs(self.logdir, exist_ok=True)
      name = self.filename or f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{id(self)}"
      self._file = open(os.path.join(self.logdir, name), "wb")
      self._writer = RecordWriter(self._file)
      self._writer.write(Event(wall_time=time.time(), file_version="brain.Event:2").SerializeToString())
    event = Event(wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=list(values)))
    self._writer.write(event.SerializeToString())
    self._file.flush()

  def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._write(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()])

  def images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    values = []
    for k, img in images.items():
      a = np.asarray(img)
      h, w = a.shape[:2]
      channels = 1 if a.ndim == 2 or a.shape[-1] == 1 else a.shape[-1]
      values.append(summary_pb2.Summary.Value(tag=k, image=summary_pb2.Summary.Image(
          height=h, width=w, colorspace=channels, encoded_image_string=png_bytes(a))))
    self._write(step, values)

  def text(self, step: int, tag: str, markdown: str) -> None:
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[markdown.encode("utf-8")],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[]))
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name=text_metadata.PLUGIN_NAME))
    self._write(step, [summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)])

  def hparams(self, hparams: Mapping[str, Any], group_name: str = "") -> None:
    """The hparams plugin's session-start record (values: bool, number or string)."""
    info = plugin_data_pb2.SessionStartInfo(group_name=group_name)
    for k, v in hparams.items():
      info.hparams[k].CopyFrom(_hparam_value(v))
    content = plugin_data_pb2.HParamsPluginData(version=hparams_metadata.PLUGIN_DATA_VERSION,
                                                session_start_info=info)
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(
        plugin_name=hparams_metadata.PLUGIN_NAME, content=content.SerializeToString()))
    null = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[0.0],
                                  tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[]))
    self._write(0, [summary_pb2.Summary.Value(tag=hparams_metadata.SESSION_START_INFO_TAG, metadata=meta,
                                              tensor=null)])

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file, self._writer = None, None


def records(path: str):
  """The records of a TFRecord file (length, masked CRC, data, masked CRC; CRCs not checked)."""
  with open(path, "rb") as f:
    while True:
      head = f.read(12)
      if len(head) < 12:
        return
      (n,) = struct.unpack("<Q", head[:8])
      data = f.read(n)
      f.read(4)
      if len(data) < n:
        return
      yield data


def read(logdir: str) -> list:
  """Every event of every events file in `logdir`, as (step, tag, value) with value a float
  (scalars), PNG bytes (images), str (text) or the hparams plugin's SessionStartInfo."""
  out = []
  for f in sorted(os.listdir(logdir)):
    if "tfevents" not in f:
      continue
    for ev in records(os.path.join(logdir, f)):
      e = Event.FromString(ev)
      for v in e.summary.value:
        kind = v.WhichOneof("value")
        if kind == "simple_value":
          out.append((e.step, v.tag, float(v.simple_value)))
        elif kind == "image":
          out.append((e.step, v.tag, v.image.encoded_image_string))
        elif v.metadata.plugin_data.plugin_name == text_metadata.PLUGIN_NAME:
          out.append((e.step, v.tag, v.tensor.string_val[0].decode("utf-8")))
        elif v.metadata.plugin_data.plugin_name == hparams_metadata.PLUGIN_NAME:
          data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
          out.append((e.step, v.tag, data.session_start_info))
  return out
