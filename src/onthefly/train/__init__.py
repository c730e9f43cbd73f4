"""Training and evaluation on the sampler's stream: the correspondence model and the fracture classifier.

:func:`train_correspondence` trains a :class:`~onthefly.models.CorrespondenceModel`
on batches drawn by a :class:`~onthefly.sampling.DRRCorrespondenceSampler`
(nothing stored), with Adam and a cosine schedule, and:

* checkpoints (model, optimiser, schedule, stream position and the model,
  training and sampler configurations; plain tensors and numbers with a
  checksum, :mod:`onthefly.checkpoint`) written atomically every
  ``checkpoint_every`` steps; ``resume=True`` continues from the last one on
  exactly the same stream (batch ``s`` is a pure function of the sampler's
  seed, rank and ``s``), so a killed run loses nothing, and refuses a run
  whose configuration differs from the saved one, listing the fields;
* a CSV metrics log, evaluation on a fixed seeded stream of held-out volumes
  (MSE, precision, recall, average precision; :mod:`onthefly.metrics`), and
  PNGs of predicted versus true correspondences;
* progress (step, loss, samples/s, time left) as a bar on a terminal, or as one
  plain line per log interval on stderr elsewhere (:class:`onthefly.logs.Progress`),
  and optionally TensorBoard events of the same numbers and pictures
  (``tensorboard=``; :class:`onthefly.logs.TensorBoardLog`);
* DistributedDataParallel when launched by ``torchrun`` (gloo on CPU, nccl on
  GPU); each rank draws its own stream; only rank 0 writes files.

:func:`train_classifier` does the same for the
:class:`~onthefly.models.FractureClassifier` on simulated fractures, with
optional correspondence pre-training (``init_from``) and attention guidance.

One job per module: :mod:`~onthefly.train.config` (:class:`TrainConfig`),
:mod:`~onthefly.train.split` (:func:`split_volume`),
:mod:`~onthefly.train.cluster` (the processes of a run),
:mod:`~onthefly.train.loop` (the loop both tasks share and its bookkeeping),
:mod:`~onthefly.train.correspondence` and :mod:`~onthefly.train.classifier`
(the two tasks), :mod:`~onthefly.train.studies` (real radiographs).
"""

from .classifier import Curriculum, evaluate_classifier, train_classifier
from .config import TrainConfig
from .correspondence import evaluate_correspondence, train_correspondence
from .split import split_volume
from .studies import evaluate_classifier_on_studies, finetune_classifier_on_studies

__all__ = [
    "TrainConfig",
    "train_correspondence",
    "train_classifier",
    "Curriculum",
    "evaluate_correspondence",
    "evaluate_classifier",
    "evaluate_classifier_on_studies",
    "finetune_classifier_on_studies",
    "split_volume",
]
