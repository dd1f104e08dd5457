package dev.mobex.verify;

import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * Staged rollouts and min_app_version (mobex/registry/rollout.py): which release of a verified
 * pointer this device installs.
 *
 * <p>bucket = uint64_be(SHA-256("mobex-rollout-v1\n" + model + "\n" + channel + "\n" + version + "\n"
 * + deviceId)[0..8]) mod 1_000_000; the device gets the pointer's version when bucket &lt; fraction_ppm,
 * else the fallback. Raising the fraction only adds devices. Use a random id stored at install
 * (e.g. {@code UUID.randomUUID().toString()}), never a hardware id.
 */
public final class Rollout {
    public static final int PPM = 1_000_000;
    public static final int MAX_DEVICE_ID_BYTES = 256;
    private static final BigInteger MOD = BigInteger.valueOf(PPM);

    private Rollout() {}

    /** The device's bucket in [0, 1_000_000) for the rollout of {@code version} on (model, channel). */
    public static int bucket(String model, String channel, String version, String deviceId)
            throws MobexVerifier.Rejected {
        checkDeviceId(deviceId);
        String text = "mobex-rollout-v1\n" + model + "\n" + channel + "\n" + version + "\n" + deviceId;
        byte[] first8 = Arrays.copyOf(MobexVerifier.sha256(text.getBytes(StandardCharsets.UTF_8)), 8);
        return new BigInteger(1, first8).mod(MOD).intValue();
    }

    static void checkDeviceId(String deviceId) throws MobexVerifier.Rejected {
        if (deviceId.isEmpty() || deviceId.getBytes(StandardCharsets.UTF_8).length > MAX_DEVICE_ID_BYTES) {
            throw new MobexVerifier.Rejected("device id must be 1-" + MAX_DEVICE_ID_BYTES + " bytes");
        }
        for (int i = 0; i < deviceId.length(); i++) {
            char c = deviceId.charAt(i);
            if (c < 0x20 || c == 0x7f) throw new MobexVerifier.Rejected("control character in device id");
        }
    }

    /**
     * The release this device and app get: the pointer's own release inside the rollout, the
     * fallback outside it (or with no device id), the fallback too when the app is older than the
     * pointer's min_app_version; rejected when no release fits the app, or when a release needs a
     * minimum app version and {@code appVersion} is null.
     */
    public static MobexVerifier.Release select(MobexVerifier.Pointer p, String deviceId, String appVersion)
            throws MobexVerifier.Rejected {
        MobexVerifier.Release[] candidates;
        if (p.fallback == null) {
            candidates = new MobexVerifier.Release[] {p.primary};
        } else if (deviceId == null) {
            candidates = new MobexVerifier.Release[] {p.fallback};
        } else if (bucket(p.model, p.channel, p.primary.version, deviceId) < p.rolloutPpm) {
            candidates = new MobexVerifier.Release[] {p.primary, p.fallback};
        } else {
            candidates = new MobexVerifier.Release[] {p.fallback};
        }
        for (MobexVerifier.Release r : candidates) {
            if (r.minAppVersion == null) return r;
            if (appVersion == null) throw new MobexVerifier.Rejected(r.version + " needs an app version to check");
            if (MobexVerifier.compareSemver(appVersion, r.minAppVersion) >= 0) return r;
        }
        throw new MobexVerifier.Rejected("app version " + appVersion + " is too old for every release of the pointer");
    }
}
