"""The trivial shmooze module of the benchmarks: sets one parameter at init, answers ``do_ping``."""

from shmooze_module import Module


class Trivial(Module):
    """Nothing but a title parameter and a ping command."""

    def on_init(self, **args: object) -> None:
        self.set_parameters(title=str(args.get("title", "trivial")))

    def do_ping(self) -> str:
        return "pong"


if __name__ == "__main__":
    Trivial.main()
