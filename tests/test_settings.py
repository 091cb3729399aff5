import pytest

from backdrop.settings import Settings, SettingsError


def test_defaults_and_environment():
    settings = Settings.from_env(
        {
            "BACKDROP_MAX_IMAGE_PIXELS": "1000",
            "BACKDROP_MODEL_MIRRORS": "/a:/b",
            "BACKDROP_QUEUE_ROUTES": "deeplab=gpu",
            "BACKDROP_CONFIRM_TARGETS": "no",
            "PORT": "9000",
            "XDG_CACHE_HOME": "/cache",
        }
    )
    assert settings.max_image_pixels == 1000
    assert [str(p) for p in settings.model_mirrors] == ["/a", "/b"]
    assert settings.queue_for("deeplab") == "gpu" and settings.queue_for("selfie") == "backdrop"
    assert settings.confirm_targets is False and settings.port == 9000
    assert str(settings.model_dir) == "/cache/backdrop/models"


@pytest.mark.parametrize(
    "env",
    [
        {"BACKDROP_THREADS": "0"},
        {"BACKDROP_MAX_IMAGE_BYTES": "lots"},
        {"BACKDROP_CONFIRM_TARGETS": "maybe"},
        {"BACKDROP_QUEUE_ROUTES": "deeplab"},
        {"BACKDROP_TASK_SOFT_TIME_LIMIT_S": "100", "BACKDROP_TASK_TIME_LIMIT_S": "90"},
        {"BACKDROP_VISIBILITY_TIMEOUT_S": "60"},
        {"BACKDROP_STORAGE_RETRIES": "8", "BACKDROP_STORAGE_RETRY_BACKOFF_S": "1"},
        {"BACKDROP_API_KEYS": "short"},
    ],
)
def test_bad_values_name_the_variable(env):
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env)
    assert any(name in caught.value.message for name in env)
