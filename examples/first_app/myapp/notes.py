from shmooze.commands import command
from shmooze.errors import CommandError
from shmooze.service import Service


class Notes(Service):
    """A list of short notes, kept in memory."""

    name = "notes"

    def __init__(self):
        super().__init__()
        self.items = []

    @command
    def add_note(self, text: str) -> int:
        """Add a note; answers how many there are."""
        if not text.strip():
            raise CommandError("a note needs some text")
        self.items.append(text)
        self.changed("notes", count=len(self.items))  # pushed to pages
        return len(self.items)

    @command(read_only=True)
    def notes(self) -> list:
        """Every note, oldest first."""
        return list(self.items)

    @command
    def clear(self) -> None:
        """Forget every note."""
        self.items.clear()
        self.changed("notes", count=0)
