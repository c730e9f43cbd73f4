"""Feed a training loop from DRRCorrespondenceSampler, save its position, resume it.

Run: ``python examples/sampler_loop.py`` (about a minute on a 2-core CPU); ``--help`` for the options.

The "model" is a deliberately tiny stand-in (one convolution per patch and a
squared-cosine head); the point is the data path: every batch is drawn,
rendered and matched on the fly, and the stream resumes exactly where it stopped.
"""

from __future__ import annotations

import argparse

import torch

import onthefly as otf


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--image-size", type=int, default=128, help="detector pixels per side (a multiple of 16)")
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel spacing the CT is resampled to, mm")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per step")
    parser.add_argument("--output", default="outputs/examples/sampled_batch.png", help="PNG of one resumed batch")
    args = parser.parse_args(argv)
    settings = dict(
        volumes=[otf.example_volume()],  # paths, Volumes or torchio Subjects; several CTs of any size
        views=2, image_size=args.image_size, patch_size=16, crop_size=180.0, spacing=args.spacing,
        batch_size=args.batch_size, seed=0, steps=6,
        augmentation=otf.Augmentation(geometric=0.5),  # flips / quarter turns permute the correspondence too
    )
    sampler = otf.DRRCorrespondenceSampler(**settings)
    model = torch.nn.Conv2d(1, 32, kernel_size=16, stride=16)  # one feature vector per patch
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(batch: otf.DRRBatch) -> float:
        b, v = batch.images.shape[:2]
        features = model(batch.images.flatten(0, 1))  # (B*V, 32, H/16, W/16)
        tokens = features.flatten(2).transpose(1, 2).reshape(b, -1, 32)  # (B, V*N, 32), view-major
        tokens = torch.nn.functional.normalize(tokens, dim=-1)
        predicted = (tokens @ tokens.transpose(1, 2)) ** 2  # (B, V*N, V*N) in [0, 1]
        loss = torch.nn.functional.mse_loss(predicted, batch.correspondence)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return float(loss.detach())

    stream = iter(sampler)
    for _ in range(3):
        batch = next(stream)
        print(f"step {batch.step}: images {tuple(batch.images.shape)}, C {tuple(batch.correspondence.shape)}, "
              f"loss {step(batch):.4f}")
    state = sampler.state_dict()  # save it with the model's checkpoint
    print("saved stream position:", state)

    resumed = otf.DRRCorrespondenceSampler(**settings)  # a new process would build the same sampler
    resumed.load_state_dict(state)
    expected = next(stream)
    again = next(iter(resumed))
    print(f"resumed at step {again.step}; same batch as the uninterrupted stream: "
          f"{torch.equal(expected.images, again.images) and torch.equal(expected.correspondence, again.correspondence)}")

    # The same stream through a DataLoader with worker processes (CPU): workers take interleaved steps.
    loader = torch.utils.data.DataLoader(resumed, batch_size=None, num_workers=2)
    print("DataLoader steps:", [batch.step for batch in loader])
    print("wrote", otf.save_batch_preview(expected, args.output))


if __name__ == "__main__":
    main()
