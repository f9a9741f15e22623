"""What a user sees in the Airflow 3 UI, in a real browser (headless Chromium) against the real api-server.

The kaapana_pacs connection form shows our fields (from ``conn-fields``), and the segmentation trigger
form shows its sections, no required mark (``*``) on optional inputs, and the installed models as a
list. Screenshots are saved under the test's temp folder (``screenshots/``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

UI_DAG_ID = "kaapana_ui_segmentation"
MODELS = ("Dataset901_TinySphere", "Dataset902_Liver")


def _browser(screenshots: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium (the test extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("headless Chromium is needed: apt-get install chromium chromium-driver", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.implicitly_wait(0)
    screenshots.mkdir(parents=True, exist_ok=True)
    return driver


def _wait_for(driver, predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # noqa: BLE001 - the page is still rendering
            value = None
        if value:
            return value
        time.sleep(0.5)
    shots = getattr(driver, "screenshots", None)
    if shots is not None:  # what the page looked like, for the report
        driver.save_screenshot(str(shots / "timed_out.png"))
        (shots / "timed_out.html").write_text(driver.page_source)
    raise AssertionError(f"timed out waiting for {what}; page text:\n{_text(driver)[:3000]}")


def _text(driver) -> str:
    return driver.find_element("tag name", "body").text


def _required_labels(driver) -> list[str]:
    """Visible labels carrying Chakra's required indicator (the ``*``)."""
    return driver.execute_script(
        """
        return Array.from(document.querySelectorAll('.chakra-field__requiredIndicator'))
          .map(el => (el.closest('label') || el.parentElement).innerText.replace('*', '').trim());
        """
    )


def _click_text(driver, text: str, tags: str = "button") -> None:
    for element in driver.find_elements("css selector", tags):
        if element.is_displayed() and element.text.strip() == text:
            driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
            element.click()
            return
    raise AssertionError(f"no visible {tags} {text!r}; page text:\n{_text(driver)[:3000]}")


@pytest.fixture
def ui(airflow_cluster, tmp_path):
    """A browser logged in as the admin (the auth manager's JWT in its cookie), and a segmentation DAG
    whose model store holds two models."""
    models = tmp_path / "models"
    for dataset in MODELS:
        trainer = models / dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres"
        trainer.mkdir(parents=True)
        (trainer / "plans.json").write_text("{}")
    (airflow_cluster.dag_folders[-1] / f"{UI_DAG_ID}.py").write_text(
        "from airflow_provider_kaapana.dag_factories.common import PipelineSettings\n"
        "from airflow_provider_kaapana.dag_factories.segmentation import create_segmentation_dag\n\n"
        f"dag = create_segmentation_dag({UI_DAG_ID!r}, PipelineSettings(models_dir={str(models)!r}))\n"
    )
    airflow_cluster.add_connection(
        "ui_pacs", "kaapana_pacs", host="pacs.example.org", port=11112, extra={"called_ae": "ORTHANC"}
    )
    airflow_cluster.wait_for_dag(UI_DAG_ID, timeout=240)
    screenshots = tmp_path / "screenshots"
    driver = _browser(screenshots)
    try:
        driver.get(airflow_cluster.url + "/api/v2/version")
        driver.add_cookie({"name": "_token", "value": airflow_cluster.token, "path": "/"})
        driver.screenshots = screenshots
        yield driver
    finally:
        driver.quit()


def test_connection_form_shows_the_kaapana_pacs_fields(ui, airflow_cluster):
    """A new connection of type kaapana_pacs, as a user adds it: every custom field, relabelled
    standard fields, the readable type name."""
    from selenium.webdriver.common.keys import Keys

    ui.get(airflow_cluster.url + "/connections")
    _wait_for(ui, lambda: "ui_pacs" in _text(ui), "the connection list")
    _click_text(ui, "Add Connection")
    type_box = _wait_for(
        ui, lambda: ui.find_element("css selector", "[role=dialog] input[role=combobox]"), "the type chooser"
    )
    type_box.send_keys("Kaapana PACS")
    _wait_for(ui, lambda: "Kaapana PACS (DIMSE + DICOMweb)" in _text(ui), "the type in the list")
    type_box.send_keys(Keys.ENTER)
    standard = _wait_for(
        ui, lambda: "DIMSE port" in _text(ui) and _text(ui), "the relabelled standard fields"
    )
    ui.save_screenshot(str(ui.screenshots / "kaapana_pacs_standard_fields.png"))
    for label in ("DIMSE host", "DIMSE port", "DICOMweb user", "DICOMweb password or bearer token"):
        assert label in standard, label
    assert "Schema" not in standard, "the schema field is hidden"
    _click_text(ui, "Extra Fields")
    text = _wait_for(ui, lambda: "DICOMweb base URL" in _text(ui) and _text(ui), "the custom fields")
    ui.save_screenshot(str(ui.screenshots / "kaapana_pacs_connection_form.png"))
    for label in (
        "Called AE title",
        "Calling AE title",
        "DICOMweb base URL",
        "DICOMweb auth",
        "C-MOVE destination AE",
        "DIMSE over TLS",
        "Retries",
    ):
        assert label in text, label
    assert "Kaapana PACS (DIMSE + DICOMweb)" in text
    called_ae = ui.find_element("css selector", "input[name=element_called_ae]")
    assert called_ae.get_attribute("value") == "DCM4CHEE", "the field's default is filled in"


def test_segmentation_trigger_form_sections_required_marks_and_models(ui, airflow_cluster):
    ui.get(f"{airflow_cluster.url}/dags/{UI_DAG_ID}")
    _wait_for(ui, lambda: "Trigger" in _text(ui), "the DAG page")
    _click_text(ui, "Trigger")
    _wait_for(ui, lambda: "Input data" in _text(ui), "the trigger form")
    required: list[str] = []
    texts: dict[str, str] = {}
    for section, field in (
        ("Input data", "Series Instance UIDs"),
        ("PACS", "Retrieve"),
        ("Model", "nnU-Net model"),
    ):
        _open_section(ui, section)
        texts[section] = _wait_for(ui, lambda f=field: f in _text(ui) and _text(ui), f"the {section} section")
        ui.save_screenshot(
            str(ui.screenshots / f"segmentation_trigger_form_{section.split()[0].lower()}.png")
        )
        required += _required_labels(ui)
        if section == "Model":
            assert MODELS[0] in texts[section], "the first installed model is the default"
            _open_model_list(ui)  # last: the open list would cover the other sections
    for optional in (
        "Series Instance UIDs",
        "Folds",
        "Modality filter",
        "Raw search query",
        "nnU-Net configuration",
    ):
        assert not any(label.startswith(optional) for label in required), (optional, required)
    assert any(label.startswith("nnU-Net model") for label in required), required
    assert "Folds" in texts["Model"] and "Modality filter" in texts["Input data"]


def _open_section(driver, title: str) -> None:
    """Open a form section (an accordion item; opening one closes the others)."""
    for trigger in driver.find_elements("css selector", "[data-part=item-trigger]"):
        if trigger.is_displayed() and trigger.text.strip() == title:
            if trigger.get_attribute("aria-expanded") != "true":
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", trigger)
                trigger.click()
            return
    raise AssertionError(f"no form section {title!r}; page text:\n{_text(driver)[:3000]}")


def _open_model_list(driver) -> bool:
    """Open the model field's list (a react-select beside the hidden ``element_model`` input)."""
    from selenium.webdriver.common.keys import Keys

    combobox = driver.find_element("xpath", "//input[@name='element_model']/..//input[@role='combobox']")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", combobox)
    combobox.click()
    combobox.send_keys(Keys.ARROW_DOWN)
    _wait_for(driver, lambda: MODELS[1] in _text(driver), "the model list")
    driver.save_screenshot(str(driver.screenshots / "segmentation_model_list.png"))
    return True
