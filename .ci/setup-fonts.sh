#!/usr/bin/env bash
# Installs the Debian font packages that the offline glyph benchmark renders from
# (`maml-ext glyphs build`). Idempotent: apt-get skips what is already installed.
# Needs root and access to the Debian archive; about 1 minute and ~1 GB installed.
set -euo pipefail

PACKAGES=(
  # broad coverage: Noto (one design per script, plus UI variants), DejaVu, FreeFont, Unifont
  fonts-noto-core fonts-noto-extra fonts-noto-ui-core fonts-dejavu fonts-dejavu-extra
  fonts-freefont-ttf fonts-unifont fonts-ancient-scripts fonts-mph-2b-damase fonts-babelstone-modern
  # Latin / Greek / Cyrillic text families (many designs of the same letters)
  fonts-liberation2 fonts-croscore fonts-crosextra-caladea fonts-crosextra-carlito fonts-urw-base35
  fonts-texgyre fonts-lmodern fonts-cmu fonts-linuxlibertine fonts-ebgaramond fonts-stix
  fonts-sil-charis fonts-sil-doulos fonts-sil-gentiumplus fonts-sil-andika fonts-paratype
  fonts-lato fonts-open-sans fonts-roboto fonts-roboto-slab fonts-cantarell fonts-oldstandard
  fonts-cardo fonts-junicode fonts-vollkorn fonts-inter fonts-comic-neue fonts-dkg-handwriting
  fonts-kristi fonts-dancingscript fonts-go fonts-quattrocento fonts-karla fonts-cabin
  fonts-averia-gwf fonts-tuffy fonts-jura fonts-uralic fonts-adf-accanthis fonts-adf-baskervald
  fonts-adf-berenis fonts-adf-gillius fonts-adf-libris fonts-adf-universalis fonts-adf-verana
  fonts-gfs-artemisia fonts-gfs-baskerville fonts-gfs-bodoni-classic fonts-gfs-complutum
  fonts-gfs-didot fonts-gfs-gazis fonts-gfs-neohellenic fonts-gfs-olga fonts-gfs-porson
  fonts-gfs-solomos fonts-gfs-theokritos fonts-sil-galatia
  # Hebrew, Arabic
  culmus fonts-sil-ezra fonts-kacst fonts-kacst-one fonts-arabeyes fonts-hosny-amiri
  fonts-hosny-thabit fonts-sil-scheherazade fonts-sil-lateef fonts-sil-harmattan fonts-paktype
  fonts-farsiweb fonts-nafees fonts-ukij-uyghur
  # Indic, Sinhala
  fonts-indic fonts-smc fonts-lohit-deva-marathi fonts-lohit-deva-nepali fonts-samyak
  fonts-sarai fonts-gargi fonts-nakula fonts-sahadeva fonts-kalapi fonts-navilu fonts-gubbi
  fonts-pagul fonts-teluguvijayam fonts-meera-inimai fonts-taml-tscu fonts-sil-annapurna
  fonts-yrsa-rasa fonts-lklug-sinhala fonts-gemunu-libre
  # South-east Asia, Tibetan
  fonts-thai-tlwg fonts-lao fonts-khmeros fonts-sil-mondulkiri fonts-myanmar fonts-sil-padauk
  fonts-tibetan-machine fonts-ddc-uchen fonts-monlam fonts-sambhota-tsugring
  fonts-sambhota-yigchung fonts-dzongkha fonts-sil-dai-banna fonts-tagbanwa
  # Georgian, Armenian, Ethiopic, African and other scripts
  fonts-bpg-georgian fonts-sil-abyssinica fonts-senamirmir-washra fonts-evertype-conakry
  fonts-sil-sophia-nubian fonts-sil-akatab fonts-sil-tagmukay fonts-lg-aboriginal
  fonts-sil-nuosusil fonts-eeyek fonts-manchufont
  # CJK: Japanese kana, Hangul, Han
  fonts-ipafont fonts-ipaexfont fonts-takao fonts-vlgothic fonts-mplus fonts-sawarabi-gothic
  fonts-sawarabi-mincho fonts-horai-umefont fonts-umeplus fonts-klee fonts-morisawa-bizud-gothic
  fonts-morisawa-bizud-mincho fonts-nanum fonts-nanum-extra fonts-unfonts-core
  fonts-unfonts-extra fonts-baekmuk fonts-lexi-gulim fonts-lexi-saebom fonts-wqy-microhei
  fonts-wqy-zenhei fonts-arphic-ukai fonts-arphic-uming fonts-lxgw-wenkai
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup-fonts: all ${#PACKAGES[@]} font packages are installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" fontconfig >/dev/null
fc-cache -f >/dev/null 2>&1 || true
echo "setup-fonts: installed ${#missing[@]} packages; $(fc-list | wc -l) font faces"
