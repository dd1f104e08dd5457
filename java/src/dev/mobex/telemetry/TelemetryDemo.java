package dev.mobex.telemetry;

import java.io.IOException;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.HashMap;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * Writes the predictions described in a JSON file as telemetry, the way an app would call the writer
 * (used by tests/monitor/test_java_telemetry.py). Usage: TelemetryDemo SPEC.json OUT.jsonl; with
 * --invalid, tries records the writer must refuse and prints one line per refusal.
 */
public final class TelemetryDemo {
  private TelemetryDemo() {}

  public static void main(String[] args) throws IOException, JSONException {
    if (args.length == 1 && args[0].equals("--invalid")) {
      invalid();
      return;
    }
    JSONObject spec = new JSONObject(new String(Files.readAllBytes(Paths.get(args[0])), StandardCharsets.UTF_8));
    JSONObject m = spec.getJSONObject("model");
    TelemetryWriter.Model model =
        new TelemetryWriter.Model(m.getString("name"), m.getString("version"), m.getString("sha256"));
    JSONArray rows = spec.getJSONArray("predictions");
    try (Writer file = new OutputStreamWriter(Files.newOutputStream(Paths.get(args[1])), StandardCharsets.UTF_8);
        TelemetryWriter writer = new TelemetryWriter(file)) {
      for (int i = 0; i < rows.length(); i++) {
        JSONObject r = rows.getJSONObject(i);
        TelemetryWriter.Prediction p = new TelemetryWriter.Prediction(r.getString("id"), r.getLong("time_ms"),
            r.getString("app_version"), r.getString("device_model"), model, r.getDouble("latency_ms"))
            .classified(r.getInt("class"), r.getString("label"), r.getDouble("score"))
            .inputFeatures(doubles(r.getJSONObject("input_features")))
            .outputFeatures(doubles(r.getJSONObject("output_features")));
        writer.writePrediction(p);
        writer.writeLabel(r.getString("id"), r.getLong("time_ms") + 60_000, r.getInt("truth"));
      }
    }
  }

  private static Map<String, Double> doubles(JSONObject o) throws JSONException {
    Map<String, Double> out = new HashMap<>();
    JSONArray names = o.names();
    for (int i = 0; names != null && i < names.length(); i++) {
      String k = names.getString(i);
      out.put(k, o.getDouble(k));
    }
    return out;
  }

  private static void invalid() {
    String sha = "0".repeat(64);
    TelemetryWriter.Model model = new TelemetryWriter.Model("m", "1.0.0", sha);
    Runnable[] cases = {
      () -> new TelemetryWriter.Model("m", "1.0.0", "ABC"),
      () -> new TelemetryWriter.Prediction("id", 0, "1.0", "Pixel", model, Double.NaN),
      () -> new TelemetryWriter.Prediction("id", 0, "1.0", "Pixel", model, -1),
      () -> new TelemetryWriter.Prediction("", 0, "1.0", "Pixel", model, 1),
      () -> new TelemetryWriter.Prediction("id", 0, "1.0", "Pixel", model, 1).classified(1, "a", 1.5),
      () -> new TelemetryWriter.Prediction("id", 0, "1.0", "Pixel", model, 1)
          .inputFeatures(Map.of("x", Double.POSITIVE_INFINITY)),
    };
    for (Runnable c : cases) {
      try {
        c.run();
        System.out.println("accepted");
      } catch (IllegalArgumentException e) {
        System.out.println("refused: " + e.getMessage());
      }
    }
  }
}
