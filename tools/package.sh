#!/usr/bin/env bash
# Builds Kaa's packages for machines without a Swift toolchain or internet, into dist/:
#   dist/kaa-VERSION-linux-x86_64.tar.gz   bin/kaa (release, Swift runtime linked statically),
#                                          the production config, the systemd unit, the man page,
#                                          the operator's guide, the licences, INSTALL
#   dist/kaa_VERSION_amd64.deb             /usr/bin/kaa, /etc/kaa/node.yaml (conffile),
#                                          kaa-node.service, the kaa user and /var/lib/kaa (postinst)
# VERSION is what the built `kaa --version` prints (Sources/KaaCore/KaaVersion.swift): the one
# source of the version. The build goes to .build-static, apart from the debug build.
# Usage: tools/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

fail() { echo "package: $*" >&2; exit 1; }

tools/install-deps.sh
for tool in dpkg-deb dpkg-shlibdeps strip nm readelf ldd gzip tar; do
  command -v "$tool" >/dev/null || fail "needs $tool (tools/install-deps.sh installs it)"
done

scratch=.build-static
echo "package: building kaa in release with the Swift runtime linked statically ($scratch)" >&2
build_start=$SECONDS
swift build -c release --static-swift-stdlib --product kaa --scratch-path "$scratch"
echo "package: the static release build took $((SECONDS - build_start)) s" >&2
built=$scratch/release/kaa

# The version: the binary's, which must be KaaVersion.swift's (a stale build would differ).
version=$("$built" --version)
source_version=$(sed -n 's/^ *public static let string = "\(.*\)"$/\1/p' Sources/KaaCore/KaaVersion.swift)
[ "$version" = "$source_version" ] ||
  fail "the built kaa says \`$version\`, Sources/KaaCore/KaaVersion.swift says \`$source_version\`"
# A native Debian version: digits first, then digits, letters and . + ~ (no revision, no -).
[[ $version =~ ^[0-9][0-9A-Za-z.+~]*$ ]] ||
  fail "version \`$version\` is not a Debian package version (digits first, then 0-9 A-Z a-z . + ~)"

# No Swift library may be loaded at run time: the machine it goes to has none.
if ldd "$built" | grep -E 'libswift|libFoundation|lib_Foundation|libdispatch|libBlocksRuntime|not found'; then
  fail "$built needs the libraries above at run time; it must link the Swift runtime statically"
fi

work=$(mktemp -d /tmp/kaa-package.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Stripped as dh_strip strips executables; it must still run.
strip --remove-section=.comment --remove-section=.note -o "$work/kaa" "$built"
[ "$("$work/kaa" --version)" = "$version" ] || fail "the stripped binary does not run"

# Reproducible archives: every file dated at the last commit.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
maintainer="Kaa maintainers <maintainers@users.noreply.b-seed-17e3e961.example>"

# Runtime dependencies: the Debian packages of the shared libraries the binary links, with the
# versions its symbols need (dpkg-shlibdeps reads a debian/control, so give it one).
mkdir -p "$work/shlibs/debian"
printf 'Source: kaa\n\nPackage: kaa\nArchitecture: amd64\n' >"$work/shlibs/debian/control"
shlibs=$(cd "$work/shlibs" && dpkg-shlibdeps -O -e "$work/kaa" 2>"$work/shlibdeps.err") ||
  { cat "$work/shlibdeps.err" >&2; fail "dpkg-shlibdeps failed"; }
lib_depends=${shlibs#shlibs:Depends=}
[ -n "$lib_depends" ] && [ "$lib_depends" != "$shlibs" ] || fail "dpkg-shlibdeps printed no dependencies: $shlibs"
# Kaa is built and tested with the single-threaded OpenBLAS: prefer it to the other variants.
lib_depends=$(sed -E 's/(^|, )libopenblas0( \([^)]*\))?(,|$)/\1libopenblas0-serial | libopenblas0\2\3/' <<<"$lib_depends")
apt_packages=$(sed -e 's/ *([^)]*)//g' -e 's/ | [^,]*//g' -e 's/,//g' <<<"$lib_depends")
# Each library the binary links directly (its NEEDED entries), with the Debian package it comes
# from, for the copyright file.
linked_libs=""
needed=$(readelf -d "$work/kaa" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
while read -r lib path; do
  grep -qx "$lib" <<<"$needed" || continue
  pkg=$(dpkg -S "$path" 2>/dev/null | head -1 | cut -d: -f1) || true
  [ -n "$pkg" ] || pkg=$(dpkg -S "$(readlink -f "$path")" 2>/dev/null | head -1 | cut -d: -f1) || true
  linked_libs+="${lib} (${pkg:-unknown package})"$'\n'
done < <(ldd "$work/kaa" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }')

# The Swift packages linked into kaa: their licences, and copyright lines for the DEP-5 copyright
# file. Which are linked comes from the link's object list; a module of a package this table
# does not know fails the packaging, so a new dependency cannot ship without its licence.
declare -A pkg_modules=(
  [swift-argument-parser]="ArgumentParser ArgumentParserToolInfo"
  [swift-atomics]="Atomics _AtomicsShims"
  [swift-protobuf]="SwiftProtobuf"
  [swift-asn1]="SwiftASN1"
  [swift-crypto]="Crypto CCryptoBoringSSL CCryptoBoringSSLShims CryptoBoringWrapper _CryptoExtras"
  [swift-log]="Logging"
  [swift-metrics]="CoreMetrics Metrics"
  [swift-prometheus]="Prometheus"
  [Yams]="Yams CYaml"
  [GRDB.swift]="GRDB"
)
declare -A pkg_copyright=(
  [swift-argument-parser]="Apple Inc. and the Swift project authors"
  [swift-atomics]="Apple Inc. and the Swift project authors"
  [swift-protobuf]="2014-2016 Apple Inc. and the project authors"
  [swift-asn1]="2022 The SwiftASN1 Project"
  [swift-crypto]="2019 The SwiftCrypto Project"
  [swift-log]="2018, 2019 The SwiftLog Project"
  [swift-metrics]="2018, 2019 The SwiftMetrics Project"
  [swift-prometheus]="2018-2023 SwiftPrometheus project authors"
  [Yams]="2016 JP Simard"
  [GRDB.swift]="2015-2025 Gwendal Roué"
)
declare -A pkg_license=(
  [swift-argument-parser]="Apache-2.0 with Swift Runtime Library Exception"
  [swift-atomics]="Apache-2.0 with Swift Runtime Library Exception"
  [swift-protobuf]="Apache-2.0 with Swift Runtime Library Exception"
  [swift-asn1]="Apache-2.0" [swift-crypto]="Apache-2.0" [swift-log]="Apache-2.0"
  [swift-metrics]="Apache-2.0" [swift-prometheus]="Apache-2.0"
  [Yams]="MIT" [GRDB.swift]="MIT"
)
link_list=$scratch/release/kaa.product/Objects.LinkFileList
[ -f "$link_list" ] || fail "no $link_list: cannot tell which modules are linked"
linked_modules=$(sed -n 's#.*/release/\([^/]*\)\.build/.*#\1#p' "$link_list" | sort -u)
own_modules=$(ls Sources)
checkouts=()
for module in $linked_modules; do
  grep -qx "$module" <<<"$own_modules" && continue
  owner=""
  for name in "${!pkg_modules[@]}"; do
    [[ " ${pkg_modules[$name]} " == *" $module "* ]] && owner=$name
  done
  [ -n "$owner" ] || fail "kaa links the module $module, which tools/package.sh has no licence entry for; add its package"
  [ -d "$scratch/checkouts/$owner" ] || fail "the package $owner of module $module is not under $scratch/checkouts"
  [[ " ${checkouts[*]} " == *" $owner "* ]] || checkouts+=("$owner")
done
[ ${#checkouts[@]} -gt 0 ] || fail "no Swift package is linked into kaa: $link_list is not what this script expects"
IFS=$'\n' read -r -d '' -a checkouts < <(printf '%s\n' "${checkouts[@]}" | sort -f && printf '\0')
swift_license=$(dirname "$(readlink -f "$(command -v swift)")")/../share/swift/LICENSE.txt
[ -f "$swift_license" ] || fail "the Swift toolchain's licence is not at $swift_license"
swift_version=$(swift --version 2>/dev/null | sed -n 's/.*Swift version \([^ ]*\).*/\1/p' | sed -n 1p)
# Foundation links ICU (swift-foundation-icu) in when internationalization is used.
uses_icu=false
if grep -q ' u_strIsWellFormed' < <(nm "$built" 2>/dev/null); then uses_icu=true; fi

# licenses/: every licence text, as shipped by each component, plus COPYRIGHT (DEP-5) naming them.
lic=$work/licenses
mkdir -p "$lic/swift-runtime"
cp "$swift_license" "$lic/swift-runtime/LICENSE.txt"
$uses_icu && install -D -m 0644 tools/package/licenses/ICU.txt "$lic/icu/LICENSE.txt"
for name in "${checkouts[@]}"; do
  mkdir -p "$lic/$name"
  found=false
  for f in "$scratch/checkouts/$name"/{LICENSE,LICENSE.txt,LICENSE.md,NOTICE,NOTICE.txt}; do
    [ -f "$f" ] && { cp "$f" "$lic/$name/"; found=true; }
  done
  $found || fail "no LICENSE file in $scratch/checkouts/$name"
done
# swift-crypto carries BoringSSL, whose licence texts are in its sources' headers only.
boring=$scratch/checkouts/swift-crypto/Sources/CCryptoBoringSSL
if [[ " ${checkouts[*]} " == *" swift-crypto "* ]]; then
  header() { awk '{ print } /\*\// { exit }' "$1"; }
  # The first by name. `sed -n 1p` reads to the end: `head -1` exits early, and `sort` writing
  # more than a pipe's buffer then dies of SIGPIPE, which pipefail turns into a failed script.
  isc=$(grep -rl "Permission to use, copy, modify, and/or distribute" "$boring/crypto" | sort | sed -n 1p)
  for f in "$boring/crypto/bio/bio.cc" "$boring/crypto/bio/pair.cc" "$isc"; do
    [ -f "$f" ] || fail "BoringSSL's licence headers are not where tools/package.sh looks ($f)"
  done
  {
    echo "swift-crypto includes BoringSSL (Sources/CCryptoBoringSSL), whose files carry one of the"
    echo "following licences in their headers (SSLeay, OpenSSL, ISC), as they read there."
    echo "Its third_party/fiat code is from fiat-crypto, under the MIT licence (the fiat-crypto authors)."
    echo
    echo "---- the SSLeay licence (crypto/bio/bio.cc) ----"
    header "$boring/crypto/bio/bio.cc"
    echo
    echo "---- the OpenSSL licence (crypto/bio/pair.cc) ----"
    header "$boring/crypto/bio/pair.cc"
    echo
    echo "---- the ISC licence (${isc#"$boring/"}) ----"
    header "$isc"
  } >"$lic/swift-crypto/BoringSSL.txt"
fi

indent() { sed -e 's/^[[:space:]]*$/./' -e 's/^/ /'; }   # a DEP-5 field body
mit_text=$(sed -n '/^Permission is hereby granted/,$p' "$scratch/checkouts/Yams/LICENSE")
[ -n "$mit_text" ] || fail "the MIT text was not found in Yams's LICENSE"
{
  echo "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
  echo "Upstream-Name: Kaa"
  echo "Comment: /usr/bin/kaa (bin/kaa in the tarball) is one executable, built from Kaa $version"
  echo " (commit $commit) with Swift $swift_version. Linked into it statically: the Swift standard"
  echo " library, runtime, Foundation, libdispatch and BlocksRuntime of that toolchain$($uses_icu && echo ", ICU")"
  echo " and the Swift packages below. Linked dynamically, from Debian packages that carry their"
  echo " own copyright files:"
  printf '%s' "$linked_libs" | sed 's/^/   /'
  echo " The licence texts, as each component ships them, are in licenses/ in the tarball and in"
  echo " /usr/share/doc/kaa/licenses/."
  echo
  echo "Files: *"
  echo "Copyright: Kaa maintainers"
  echo "License: LicenseRef-Kaa"
  echo
  echo "Files: swift-toolchain/usr/lib/swift_static/*"
  echo "Copyright: Apple Inc. and the Swift project authors"
  echo "License: Apache-2.0 with Swift Runtime Library Exception"
  echo "Comment: the Swift runtime, standard library, Foundation, libdispatch, BlocksRuntime"
  if $uses_icu; then
    echo
    echo "Files: swift-toolchain/usr/lib/swift_static/linux/lib_FoundationICU.a"
    echo "Copyright: 2016-2024 Unicode, Inc."
    echo "License: Unicode-3.0"
    echo "Comment: ICU, in Foundation's swift-foundation-icu"
  fi
  for name in "${checkouts[@]}"; do
    echo
    echo "Files: .build/checkouts/$name/*"
    echo "Copyright: ${pkg_copyright[$name]}"
    echo "License: ${pkg_license[$name]}"
    case $name in
      swift-crypto)
        echo
        echo "Files: .build/checkouts/swift-crypto/Sources/CCryptoBoringSSL/*"
        echo "Copyright: 1995-1998 Eric Young; 1998-2011 The OpenSSL Project; The BoringSSL Authors and Google Inc."
        echo "License: SSLeay and OpenSSL and ISC"
        echo "Comment: BoringSSL; each file's header says which licence it is under; the texts are in"
        echo " licenses/swift-crypto/BoringSSL.txt. third_party/fiat is fiat-crypto's (MIT)." ;;
      Yams)
        echo
        echo "Files: .build/checkouts/Yams/Sources/CYaml/*"
        echo "Copyright: 2006-2016 Kirill Simonov; 2017-2020 Ingy döt Net"
        echo "License: MIT"
        echo "Comment: libyaml" ;;
    esac
  done
  echo
  echo "License: LicenseRef-Kaa"
  echo " The licence of Kaa itself is not stated in its source repository; ask its maintainers."
  echo
  echo "License: Apache-2.0"
  echo " On Debian systems the full text of the Apache License, Version 2.0, is in"
  echo " /usr/share/common-licenses/Apache-2.0."
  echo
  echo "License: Apache-2.0 with Swift Runtime Library Exception"
  { echo "On Debian systems the full text of the Apache License, Version 2.0, is in"
    echo "/usr/share/common-licenses/Apache-2.0. The exception:"
    echo
    sed -n '/^## Runtime Library Exception/,$p' "$swift_license"; } | indent
  echo
  echo "License: MIT"
  indent <<<"$mit_text"
  if [[ " ${checkouts[*]} " == *" swift-crypto "* ]]; then
    echo
    echo "License: SSLeay and OpenSSL and ISC"
    indent <"$lic/swift-crypto/BoringSSL.txt"
  fi
  if $uses_icu; then
    echo
    echo "License: Unicode-3.0"
    indent <tools/package/licenses/ICU.txt
  fi
} >"$lic/COPYRIGHT"

sed "s/@VERSION@/$version/g" tools/package/kaa.1.in >"$work/kaa.1"

mkdir -p dist
# ---- the tarball ---------------------------------------------------------------------------
name=kaa-$version-linux-x86_64
t=$work/tar/$name
install -D -m 0755 "$work/kaa" "$t/bin/kaa"
install -D -m 0644 cluster/node-production.yaml "$t/etc/node.yaml"
mkdir -p "$t/systemd"
sed 's#^ExecStart=/usr/bin/kaa #ExecStart=/usr/local/bin/kaa #' cluster/kaa-node.service >"$t/systemd/kaa-node.service"
grep -q '^ExecStart=/usr/local/bin/kaa ' "$t/systemd/kaa-node.service" || fail "cannot point the tarball's unit at /usr/local/bin/kaa"
install -D -m 0644 "$work/kaa.1" "$t/man/kaa.1"
install -D -m 0644 docs/operations.md "$t/doc/operations.md"
cp -r "$lic" "$t/licenses"
sed -e "s/@VERSION@/$version/g" -e "s/@APT_PACKAGES@/$apt_packages/" tools/package/INSTALL.in >"$t/INSTALL"
find "$t" -type d -exec chmod 0755 {} +
find "$t" -type f ! -path "$t/bin/kaa" -exec chmod 0644 {} +
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
  -C "$work/tar" -cf - "$name" | gzip -9n >"dist/$name.tar.gz"

# ---- the .deb ------------------------------------------------------------------------------
d=$work/deb
install -D -m 0755 "$work/kaa" "$d/usr/bin/kaa"
install -D -m 0644 cluster/node-production.yaml "$d/etc/kaa/node.yaml"
install -D -m 0644 cluster/kaa-node.service "$d/lib/systemd/system/kaa-node.service"
doc=$d/usr/share/doc/kaa
install -D -m 0644 "$lic/COPYRIGHT" "$doc/copyright"
cp -r "$lic" "$doc/licenses"
rm "$doc/licenses/COPYRIGHT"
install -D -m 0644 docs/operations.md "$doc/operations.md"
gzip -9n "$doc/operations.md"
{
  echo "kaa ($version) unstable; urgency=medium"
  echo
  echo "  * Kaa $version, built from commit $commit."
  echo
  echo " -- $maintainer  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"
# Yams vendors libyaml (Sources/CYaml) and is linked in statically, like every Swift package here:
# the copy lintian finds is Yams's, which Yams builds against, not Debian's libyaml.
install -d "$d/usr/share/lintian/overrides"
printf '%s\n' "# libyaml is vendored by Yams, a Swift package linked into kaa statically (see copyright)." \
  "kaa: embedded-library libyaml [usr/bin/kaa]" >"$d/usr/share/lintian/overrides/kaa"
install -d "$d/usr/share/man/man1"
gzip -9n <"$work/kaa.1" >"$d/usr/share/man/man1/kaa.1.gz"
install -d "$d/DEBIAN"
for script in postinst prerm postrm; do install -m 0755 "tools/package/deb/$script" "$d/DEBIAN/$script"; done
echo /etc/kaa/node.yaml >"$d/DEBIAN/conffiles"
find "$d" -type d -exec chmod 0755 {} +
find "$d/usr/share" -type f -exec chmod 0644 {} +
(cd "$d" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$d/DEBIAN/md5sums"
chmod 0644 "$d/DEBIAN/md5sums" "$d/DEBIAN/conffiles"
installed_size=$(du -sk --apparent-size --exclude=DEBIAN "$d" | cut -f1)
cat >"$d/DEBIAN/control" <<EOF
Package: kaa
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $installed_size
Depends: $lib_depends, adduser
Section: net
Priority: optional
Description: decentralized model-serving cluster node
 Kaa serves many small machine-learning models (ONNX, with their pre- and
 post-processing) from a cluster of peer nodes on your own servers. The nodes
 find each other by encrypted gossip, keep every published model snapshot on
 at least two of them, answer Open Inference Protocol (KServe v2) calls for
 any model and record every call they could not answer as a dead letter.
 .
 This package installs the kaa executable, the systemd unit kaa-node.service
 and its configuration in /etc/kaa; it makes the kaa user, /var/lib/kaa, a
 cluster key and an admin token.
EOF
dpkg-deb --build --root-owner-group -Zxz "$d" "dist/kaa_${version}_amd64.deb" >/dev/null

echo "package: dist/$name.tar.gz ($(du -h "dist/$name.tar.gz" | cut -f1))"
echo "package: dist/kaa_${version}_amd64.deb ($(du -h "dist/kaa_${version}_amd64.deb" | cut -f1)), Depends: $lib_depends, adduser"
