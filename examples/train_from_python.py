"""Train spikeep's quick-start network from a script: the config, network and EP learner from spikeep,
the optimizer from torch.optim, the batches from a torch DataLoader; then the test accuracy of the
free phase. Runs anywhere spikeep is installed (the quick-start data ships inside the package).

    python examples/train_from_python.py [--iterations 300] [--batch-size 20] [--seed 0]
"""
import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

import spikeep


def main(iterations: int = 300, batch_size: int = 20, seed: int = 0) -> float:
    cfg = spikeep.load_config("quickstart")     # a shipped config, by name: 784-512-10, symmetric EP, softmax readout
    net = spikeep.build_network(cfg)            # weights initialised from cfg.train.seed
    learner = spikeep.learner(cfg, net)         # free phase (T1 = 20), +-beta nudged phases (T2 = 4)
    data = spikeep.load_data(cfg)               # 6,000 training and 1,000 test MNIST images
    # one learning rate per layer, as the config says (hidden layer, readout)
    opt = torch.optim.SGD([{"params": layer.parameters(), "lr": lr} for layer, lr in zip(net.layers, cfg.train.lrs)],
                          momentum=cfg.train.momentum)
    loader = DataLoader(TensorDataset(data.train.x, data.train.y), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    done = 0
    while done < iterations:
        for x, y in loader:
            opt.zero_grad()
            r = learner.estimate(x, y)  # EP's estimate of d(loss)/d(parameters), written into .grad
            opt.step()                  # nothing else to call: the learner sees the new weights
            done += 1
            if done % 100 == 0:
                print(f"iteration {done}: batch loss {r.loss.mean():.4f}")
            if done == iterations:
                break
    model = spikeep.Model(net, cfg)              # model(x): class scores of the free phase
    accuracy = 100.0 * float((model.predict(data.test.x) == data.test.y).float().mean())
    print(f"test accuracy after {iterations} iterations: {accuracy:.2f}%")
    return accuracy


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    main(a.iterations, a.batch_size, a.seed)
