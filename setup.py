# Only here to build the optional C core of the BPE trainer (lmforge/_bpe.c).
# Everything else is declared in pyproject.toml. If no C compiler is present the
# build still succeeds and lmforge falls back to its pure-Python trainer.
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as e:  # no compiler: the pure-Python path is used
            print(f"warning: lmforge C extension not built ({e}); using pure Python")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as e:
            print(f"warning: {ext.name} not built ({e}); using pure Python")


setup(
    ext_modules=[Extension("lmforge._bpe", ["lmforge/_bpe.c"], extra_compile_args=["-O3"])],
    cmdclass={"build_ext": OptionalBuildExt},
)
