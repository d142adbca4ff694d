import jax

from searchr2_jax import components
from searchr2_jax.config import base_config


def test_the_compile_cache_is_the_jax_folder_if_set_else_searchr2_cache_jax_and_off_on_request(monkeypatch, tmp_path):
    session = jax.config.jax_compilation_cache_dir  # the test session's JAX_COMPILATION_CACHE_DIR (conftest)
    min_time = jax.config.jax_persistent_cache_min_compile_time_secs
    config = base_config()
    try:
        assert session and components.use_compile_cache(config) == session
        jax.config.update("jax_compilation_cache_dir", None)
        config.compile_cache = False
        assert components.use_compile_cache(config) == "" and jax.config.jax_compilation_cache_dir is None
        config.compile_cache = True
        monkeypatch.setenv("SEARCHR2_CACHE", str(tmp_path))
        assert components.use_compile_cache(config) == str(tmp_path / "jax")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    finally:
        jax.config.update("jax_compilation_cache_dir", session)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", min_time)
