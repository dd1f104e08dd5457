package dev.mobex.telemetry;

import java.io.Closeable;
import java.io.Flushable;
import java.io.IOException;
import java.io.Writer;
import java.time.Instant;
import java.util.Map;
import java.util.regex.Pattern;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * Writes mobex telemetry records (JSON Lines, docs/monitoring.md) for {@code mobex monitor}.
 *
 * <p>One line per prediction, and one line per ground-truth label that arrives later (joined to its
 * prediction by id). Plain Java and Android's org.json only. Values are checked before anything is
 * written: a record {@code mobex monitor} would count as malformed throws IllegalArgumentException
 * instead. The writer is thread-safe; each record is written whole, as one line.
 */
public final class TelemetryWriter implements Closeable, Flushable {
  public static final String SCHEMA = "https://mobex.dev/schemas/telemetry/v1";
  private static final Pattern SHA256 = Pattern.compile("[0-9a-f]{64}");
  private static final int MAX_TEXT = 128;
  private static final int MAX_FEATURES = 4096;

  private final Writer out;

  public TelemetryWriter(Writer out) {
    if (out == null) {
      throw new IllegalArgumentException("out must not be null");
    }
    this.out = out;
  }

  /** The model a record is about: the bundle's name, version and sha256 (as the pull result gives it). */
  public static final class Model {
    final String name;
    final String version;
    final String sha256;

    public Model(String name, String version, String sha256) {
      this.name = text("model.name", name);
      this.version = text("model.version", version);
      if (sha256 == null || !SHA256.matcher(sha256).matches()) {
        throw new IllegalArgumentException("model.sha256 must be 64 lowercase hex digits");
      }
      this.sha256 = sha256;
    }
  }

  /** One prediction. Required: id, time, app version, device model, model, latency. The rest is optional. */
  public static final class Prediction {
    String id;
    long timestampMillis;
    String appVersion;
    String deviceModel;
    Model model;
    double latencyMs = Double.NaN;
    Integer predictedClass;
    String predictedLabel;
    Double score;
    Map<String, Double> inputFeatures;
    Map<String, Double> outputFeatures;
    Integer groundTruth;

    public Prediction(String id, long timestampMillis, String appVersion, String deviceModel, Model model,
        double latencyMs) {
      this.id = text("id", id);
      this.timestampMillis = timestampMillis;
      this.appVersion = text("app_version", appVersion);
      this.deviceModel = text("device_model", deviceModel);
      if (model == null) {
        throw new IllegalArgumentException("model must not be null");
      }
      this.model = model;
      if (!(latencyMs >= 0) || Double.isInfinite(latencyMs)) {
        throw new IllegalArgumentException("latency_ms must be a finite number >= 0, not " + latencyMs);
      }
      this.latencyMs = latencyMs;
    }

    /** A classifier's predicted class index, its label, and its probability (softmax of the scores). */
    public Prediction classified(int index, String label, double probability) {
      if (index < 0) {
        throw new IllegalArgumentException("class must be >= 0");
      }
      if (!(probability >= 0 && probability <= 1)) {
        throw new IllegalArgumentException("score must be a probability in [0, 1], not " + probability);
      }
      this.predictedClass = index;
      this.predictedLabel = label;
      this.score = probability;
      return this;
    }

    /** Input features named as in the bundle's assets/reference_stats.json (e.g. "image.mean[c0]"). */
    public Prediction inputFeatures(Map<String, Double> features) {
      this.inputFeatures = checkedFeatures("input.features", features);
      return this;
    }

    /** Output features named as in the reference statistics (e.g. "logits.top1_score"). */
    public Prediction outputFeatures(Map<String, Double> features) {
      this.outputFeatures = checkedFeatures("prediction.features", features);
      return this;
    }

    /** The ground-truth class when it is known at prediction time (else write a label record later). */
    public Prediction groundTruth(int label) {
      this.groundTruth = label;
      return this;
    }
  }

  public synchronized void writePrediction(Prediction p) throws IOException {
    try {
      JSONObject record = head("prediction", p.id, p.timestampMillis);
      record.put("app_version", p.appVersion);
      record.put("device_model", p.deviceModel);
      JSONObject model = new JSONObject();
      model.put("name", p.model.name);
      model.put("version", p.model.version);
      model.put("sha256", p.model.sha256);
      record.put("model", model);
      record.put("latency_ms", p.latencyMs);
      JSONObject prediction = new JSONObject();
      if (p.predictedClass != null) {
        prediction.put("class", p.predictedClass.intValue());
        prediction.put("score", p.score.doubleValue());
        if (p.predictedLabel != null) {
          prediction.put("label", p.predictedLabel);
        }
      }
      if (p.outputFeatures != null) {
        prediction.put("features", new JSONObject(p.outputFeatures));
      }
      record.put("prediction", prediction);
      if (p.inputFeatures != null) {
        JSONObject input = new JSONObject();
        input.put("features", new JSONObject(p.inputFeatures));
        record.put("input", input);
      }
      if (p.groundTruth != null) {
        record.put("label", p.groundTruth.intValue());
      }
      line(record);
    } catch (JSONException e) {
      throw new IllegalArgumentException("cannot encode the record: " + e.getMessage(), e);
    }
  }

  /** A ground-truth label that arrived after the prediction with this id. */
  public synchronized void writeLabel(String predictionId, long timestampMillis, int label) throws IOException {
    try {
      JSONObject record = head("label", text("id", predictionId), timestampMillis);
      record.put("label", label);
      line(record);
    } catch (JSONException e) {
      throw new IllegalArgumentException("cannot encode the label: " + e.getMessage(), e);
    }
  }

  private static JSONObject head(String kind, String id, long timestampMillis) throws JSONException {
    JSONObject record = new JSONObject();
    record.put("schema", SCHEMA);
    record.put("kind", kind);
    record.put("id", id);
    record.put("timestamp", Instant.ofEpochMilli(timestampMillis).toString());
    return record;
  }

  private void line(JSONObject record) throws IOException {
    String text = record.toString();
    if (text.indexOf('\n') >= 0) {
      throw new IllegalStateException("a record must be one line");
    }
    out.write(text);
    out.write('\n');
  }

  static String text(String what, String value) {
    if (value == null || value.isEmpty() || value.length() > MAX_TEXT) {
      throw new IllegalArgumentException(what + " must be 1 to " + MAX_TEXT + " characters");
    }
    return value;
  }

  static Map<String, Double> checkedFeatures(String what, Map<String, Double> features) {
    if (features == null || features.size() > MAX_FEATURES) {
      throw new IllegalArgumentException(what + " must hold at most " + MAX_FEATURES + " features");
    }
    for (Map.Entry<String, Double> e : features.entrySet()) {
      Double v = e.getValue();
      if (e.getKey() == null || v == null || v.isNaN() || v.isInfinite()) {
        throw new IllegalArgumentException(what + " " + e.getKey() + " must be a finite number");
      }
    }
    return features;
  }

  @Override
  public synchronized void flush() throws IOException {
    out.flush();
  }

  @Override
  public synchronized void close() throws IOException {
    out.close();
  }
}
