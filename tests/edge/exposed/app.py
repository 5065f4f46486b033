"""Objects for the callable-method rule and the exposure config (docs/security.md): every kind
of attribute a class can hold, next to the methods that must stay callable."""

from __future__ import annotations

from duro import DurableObject, Request, Response


class Base(DurableObject):
    """The user's own base class: its methods are callable on subclasses."""

    async def inherited(self) -> str:
        return "from Base"

    async def overridden(self) -> str:
        return "Base"


class Mixin:
    """A plain mixin of the user's: its functions are methods of the class too."""

    def mixed(self) -> str:  # not async: a plain function is a method as well
        return "from Mixin"


class Thing(Mixin, Base):
    LIMIT = 5  # a class attribute
    Nested = int  # a nested class

    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.value = 0
        # An instance attribute with a method's name: calls still get the class's method.
        self.shadowed = lambda: "instance attribute"
        ctx.block_concurrency_while(self._load)

    async def _load(self) -> None:
        self.value = await self.ctx.storage.get("value", 0)

    @staticmethod
    def static() -> str:
        return "static!"

    @classmethod
    def klass(cls) -> str:
        return "class!"

    @property
    def prop(self) -> str:
        return "property!"

    async def overridden(self) -> str:
        return "Thing"

    async def shadowed(self) -> str:
        return "class method"

    async def add(self, by=1):
        self.value += by
        self.ctx.storage.put("value", self.value)
        return self.value

    async def get(self):
        return self.value

    async def echo(self, *args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    async def _private(self) -> str:
        return "private!"

    async def fetch(self, request: Request) -> Response:
        return Response.json({"value": self.value, "path": request.path})


class Hidden(DurableObject):
    """Bound but exposed to nothing."""

    async def get(self) -> str:
        return "hidden"

    async def fetch(self, request: Request) -> Response:
        return Response.json({"hidden": True})
