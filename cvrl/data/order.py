"""The global order of the training examples: one stream for any number of hosts.

Each epoch e is a seeded permutation of the n training examples (positions 0 .. n-1 of the
source's example list), a pure function of (run seed, e). The epochs are laid end to end
and global batch k is stream positions [kB, (k+1)B) (B the global batch size), whatever
the process count; process p of P reads rows [p B/P, (p+1) B/P) of it, so the global
batch is the processes' parts in process order (as `cvrl.engine.input.global_batch`
assembles it). Every example is in every epoch once.

A batch that straddles two epochs holds the last r examples of epoch e and the first
B - r of epoch e+1; epoch e+1 puts first the first B - r of its permutation that are not
among those r (the others keep their order), so no batch holds an example twice. With
n >= 2B that repair stays inside the first B positions of an epoch and epoch e's order
needs only the permutations of e-1 and e; with B <= n < 2B it is carried from epoch 0
(cheap: such an epoch has fewer than 2B examples). n < B cannot be batched without
repeats and is refused (`check_size`).

A resume at step s starts at epoch floor(sB / n) and at its own first row of batch s,
computed, not read: nothing before it is read or decoded.
"""
from __future__ import annotations

import tensorflow as tf

from cvrl.core.errors import ConfigError
from cvrl.data import augmentation

_TAG_ORDER = 1  # the epoch permutation's seed tag


def check_size(n: int, global_batch: int) -> None:
  """ConfigError (one line) when the examples cannot fill one global batch without repeats."""
  if n < global_batch:
    raise ConfigError(f'the training data has {n} examples, fewer than one global batch of '
                      f'{global_batch} (batch_size): a batch would hold a video twice; use a '
                      'smaller batch_size or more data')


def _permutation(n: int, seed: int, epoch):
  seed = augmentation.fold_seed(tf.constant([seed, _TAG_ORDER], tf.int64), epoch)
  return tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=seed)


def _tail(order, r, size: int):
  """The last r entries of `order`, padded with -1 to `size`."""
  last = order[tf.size(order, out_type=tf.int64) - r:]
  return tf.concat([last, -tf.ones([size - r], tf.int64)], 0)


def _repair(perm, tail, head):
  """`perm` with first its first `head` entries that are not in `tail`, then the rest in order."""
  first = perm[:tf.size(tail)]
  free = tf.logical_not(tf.reduce_any(tf.equal(first[:, None], tail[None, :]), axis=1))
  take = tf.logical_and(free, tf.cumsum(tf.cast(free, tf.int64)) <= head)
  return tf.concat([tf.boolean_mask(first, take), tf.boolean_mask(first, tf.logical_not(take)),
                    perm[tf.size(tail):]], 0)


def epoch_order(n: int, batch: int, seed: int, epoch):
  """int64 [n]: the positions of epoch `epoch` in stream order (epoch a scalar tensor)."""
  epoch = tf.cast(epoch, tf.int64)
  r = lambda e: (e * n) % batch  # examples of epoch e-1 in the batch that ends it
  start = epoch if n >= 2 * batch else tf.zeros_like(epoch)
  tail = tf.cond(start > 0, lambda: _tail(_permutation(n, seed, start - 1), r(start), batch),
                 lambda: -tf.ones([batch], tf.int64))

  def body(e, tail):
    order = _repair(_permutation(n, seed, e), tail, batch - r(e))
    return e + 1, _tail(order, r(e + 1), batch)
  _, tail = tf.while_loop(lambda e, _: e < epoch, body, (start, tail))
  return _repair(_permutation(n, seed, epoch), tail, batch - r(epoch))


def process_part(n: int, batch: int, seed: int, epoch, start_step: int, process: tuple[int, int]):
  """(positions, epochs) int64: this process's rows of the global batches that start in
  `epoch` (from batch start_step on), in order; a batch's last rows may be the next epoch's."""
  index, count = process
  rows = batch // count
  epoch = tf.cast(epoch, tf.int64)
  first = tf.maximum(-(-epoch * n // batch), start_step)
  end = -(-(epoch + 1) * n // batch)
  stream = tf.concat([epoch_order(n, batch, seed, epoch),
                      epoch_order(n, batch, seed, epoch + 1)[:batch]], 0)
  local = (tf.range(first, tf.maximum(first, end))[:, None] * batch + index * rows
           + tf.range(rows, dtype=tf.int64)[None, :] - epoch * n)
  local = tf.reshape(local, [-1])
  return tf.gather(stream, local), epoch + tf.cast(local >= n, tf.int64)


def start_epoch(n: int, batch: int, start_step: int) -> int:
  """The epoch that global batch `start_step` starts in."""
  return int(start_step) * int(batch) // int(n)
