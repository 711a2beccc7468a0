"""A pool module: a light that blinks in its colour until removed."""

from __future__ import annotations

from shmooze_module import Module


class Blinker(Module):
    def on_init(self, color: str = "orange", period: float = 0.5, **_: object) -> None:
        self.period = max(0.05, float(period))
        self.lit = False
        self.blinks = 0
        self.set_parameters(color=color, lit=False, blinks=0)

    def on_play(self, **_: object) -> None:
        self.tick(self.period, self.toggle)

    def toggle(self) -> None:
        self.lit = not self.lit
        self.blinks += self.lit
        self.set_parameters(lit=self.lit, blinks=self.blinks)

    def do_color(self, color: str) -> str:
        """Change the colour."""
        self.set_parameters(color=color)
        return color


if __name__ == "__main__":
    Blinker.main()
